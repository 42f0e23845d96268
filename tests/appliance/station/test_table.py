"""The station's bed model and table: pure functions of BedState and a given ``now``."""
from __future__ import annotations

import json
from collections import deque
from datetime import datetime, timedelta, timezone

import pytest

from appliance.mqtt import messages, topics
from appliance.station.board import TREND_NONE, BedState, Board, ScorePoint, score_age_s, trend
from appliance.station.table import bed_row, render_table

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def point(nips: float, ago_s: float, *, mid: str | None = None, received_ago_s: float | None = None,
          mods: tuple[str, ...] = ("video", "audio")) -> ScorePoint:
    end = NOW - timedelta(seconds=ago_s)
    rec = NOW - timedelta(seconds=ago_s if received_ago_s is None else received_ago_s)
    return ScorePoint(mid or f"m{nips}-{ago_s}", nips, nips * 10 / 7, end, rec, mods)


def bed(points: list[ScorePoint], **kw: object) -> BedState:
    b = BedState("nicu", "3", **kw)  # type: ignore[arg-type]
    b.scores.extend(points)
    return b


def test_fresh_score_shows_value_trend_age_status_health_inputs() -> None:
    b = bed([point(1.0, 240), point(2.0, 180), point(3.0, 120), point(4.0, 5)], status="online",
            health={"state": "degraded", "detail": "audio down"})
    row = bed_row(b, NOW, stale_after_s=30, trend_window_s=300)
    assert row.cells == ("nicu/3", "4.0", "5.7", "↑", "5s", "online", "degraded (audio down)", "VA.")
    assert not row.stale and row.nips == 4.0


def test_stale_score_never_shown_as_current() -> None:
    b = bed([point(6.0, 100), point(6.5, 95)], status="online")
    row = bed_row(b, NOW, stale_after_s=30, trend_window_s=300)
    assert row.stale and row.nips is None
    assert row.cells[1] == "stale" and row.cells[2] == "-" and row.cells[3] == TREND_NONE
    assert row.cells[4] == "1m35s"
    text = render_table([b], now=NOW, stale_after_s=30)
    assert "6.5" not in text and "stale" in text


def test_late_delivery_or_slow_device_clock_cannot_make_a_score_fresh() -> None:
    # Window ended 2 s ago by the device clock but the station received it 60 s ago: it is 60 s old.
    assert score_age_s(point(2.0, 2, received_ago_s=60), NOW) == pytest.approx(60)
    # Device clock behind: window "ended" 90 s ago although it just arrived: treated as 90 s old.
    assert score_age_s(point(2.0, 90, received_ago_s=0), NOW) == pytest.approx(90)
    assert bed_row(bed([point(2.0, 90, received_ago_s=0)]), NOW, stale_after_s=30, trend_window_s=300).stale


@pytest.mark.parametrize("values,arrow", [
    ([1, 2, 3, 4, 5], "↑"), ([5, 4, 3, 2, 1], "↓"), ([3, 3.1, 2.9, 3, 3], "→"), ([3, 5], " "),
])
def test_trend_arrow_from_slope_over_window(values: list[float], arrow: str) -> None:
    pts = [point(v, 240 - 60 * i) for i, v in enumerate(values)]
    assert trend(pts, NOW, window_s=300) == arrow


def test_trend_ignores_scores_outside_the_window() -> None:
    old_rise = [point(0.0, 3000), point(7.0, 2900)]
    flat = [point(3.0, 200), point(3.0, 100), point(3.0, 10)]
    assert trend(old_rise + flat, NOW, window_s=300) == "→"


def test_no_score_yet_and_offline_bed() -> None:
    b = bed([], status="offline")
    row = bed_row(b, NOW, stale_after_s=30, trend_window_s=300)
    assert row.cells[1] == "-" and row.cells[4] == "never" and row.offline
    coloured = render_table([b], now=NOW, color=True)
    assert "\x1b[31m" in coloured and "\x1b[31m" not in render_table([b], now=NOW)


def test_table_columns_are_aligned_and_beds_sorted_naturally() -> None:
    beds = [BedState("nicu", n) for n in ("10", "2", "1")]
    lines = render_table(beds, now=NOW).splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == ["nicu/10", "nicu/2", "nicu/1"]  # as given: render keeps order
    board = Board()
    for n in ("10", "2", "1"):
        board.ingest(f"neopain/nicu/{n}/status", b"online", NOW)
    lines = render_table(board.snapshot(), now=NOW).splitlines()
    assert [ln.split()[0] for ln in lines[2:]] == ["nicu/1", "nicu/2", "nicu/10"]
    header = lines[1]
    assert all(ln.index("online") == header.index("STATUS") for ln in lines[2:])


def test_board_ingests_score_status_health_and_counts_bad_and_duplicate(make_score) -> None:  # type: ignore[no-untyped-def]
    board = Board()
    s = make_score(nips=2.0)
    payload = messages.encode(s)
    assert board.ingest("neopain/nicu/7/score", payload, NOW) == "score"
    assert board.ingest("neopain/nicu/7/score", payload, NOW) == "duplicate"
    assert board.ingest("neopain/nicu/7/status", b"offline", NOW) == "status"
    health = messages.build_health(device_id="dev-1", sources={"camera": True}, state="ok")
    assert board.ingest("neopain/nicu/7/health", messages.encode(health), NOW) == "health"
    assert board.ingest("neopain/nicu/7/score", b"{not json", NOW) == "invalid"
    bad = dict(s, message_id="x", nips=9)
    assert board.ingest("neopain/nicu/7/score", json.dumps(bad).encode(), NOW) == "invalid"
    assert board.ingest("neopain/nicu/7/status", b"maybe", NOW) == "invalid"
    assert board.ingest("other/nicu/7/score", payload, NOW) == "ignored"
    (b,) = board.snapshot()
    assert (len(b.scores), b.duplicates, b.invalid, b.status) == (1, 1, 3, "offline")
    assert b.health is not None and b.health["state"] == "ok"
    assert b.last is not None and b.last.nips == 2.0 and b.last.modalities == ("video", "audio")


def test_board_keeps_window_order_when_an_old_score_arrives_late(make_score) -> None:  # type: ignore[no-untyped-def]
    board = Board()
    newer, older = make_score(nips=5.0, end_ago_s=1), make_score(nips=1.0, end_ago_s=30)
    board.ingest("neopain/a/1/score", messages.encode(newer), NOW)
    board.ingest("neopain/a/1/score", messages.encode(older), NOW)
    (b,) = board.snapshot()
    assert [p.nips for p in b.scores] == [1.0, 5.0]  # the last score shown is the newest window


def test_snapshot_is_a_copy() -> None:
    board = Board()
    board.ingest("neopain/a/1/status", b"online", NOW)
    snap = board.snapshot()
    snap[0].scores.append(point(1.0, 1))
    assert len(board.snapshot()[0].scores) == 0
    assert isinstance(snap[0].scores, deque)


def test_parse_topic_and_site_filter() -> None:
    assert topics.parse_topic("neopain/s/b/score") == ("s", "b", "score")
    assert topics.parse_topic("neopain/s/b/vitals") is None
    assert topics.parse_topic("neopain/s/b/cmd/x") is None
    assert topics.station_filters("nicu") == ["neopain/nicu/+/score", "neopain/nicu/+/status", "neopain/nicu/+/health"]
    with pytest.raises(ValueError, match="--site"):
        topics.station_filters("a/b", name="--site")


# ------------------------------------------------------------------------------------------ health grouping, narrow
def flapping_bed(name: str = "3", *, changes: list[tuple[float, str]], detail: str | None = None) -> BedState:
    """A bed whose health went through ``changes`` ((seconds ago, state), oldest first) via the board."""
    board = Board()
    for ago, state in changes:
        msg = messages.build_health(device_id="d", sources={"camera": True}, state=state,
                                    detail=detail if state != "ok" else None)
        received = NOW - timedelta(seconds=ago)
        assert board.ingest(f"neopain/nicu/{name}/health", messages.encode(msg), received) == "health"
    (b,) = board.snapshot()
    return b


def test_a_modality_that_comes_and_goes_is_counted_not_an_alarm() -> None:
    from appliance.station.board import health_view

    cry = [(200 - 20 * i, "degraded" if i % 2 else "ok") for i in range(10)]  # 9 changes, 20 s apart
    flap = flapping_bed(changes=cry, detail="scoring without audio")
    view = health_view(flap, NOW)
    assert (view.state, view.changes, view.alarm) == ("degraded", 9, False)
    assert view.since == NOW - timedelta(seconds=20)
    row = bed_row(flap, NOW, stale_after_s=30, trend_window_s=300)
    assert row.cells[6] == "degraded 9x/10m (scoring without audio)" and not row.alarm
    assert "\x1b[31m" not in render_table([flap], now=NOW, color=True)  # not red: no alarm
    old = flapping_bed(changes=[(3600 - 20 * i, "degraded" if i % 2 else "ok") for i in range(10)])
    assert health_view(old, NOW).changes == 0  # changes an hour ago are not counted


def test_a_lasting_state_alarms_and_a_short_one_does_not() -> None:
    from appliance.station.board import HEALTH_ALARM_AFTER_S, health_view

    lasting = flapping_bed(changes=[(600, "ok"), (HEALTH_ALARM_AFTER_S + 5, "no_score")], detail="engines failed")
    short = flapping_bed(changes=[(600, "ok"), (HEALTH_ALARM_AFTER_S - 5, "no_score")], detail="engines failed")
    assert health_view(lasting, NOW).alarm and not health_view(short, NOW).alarm
    assert bed_row(lasting, NOW, stale_after_s=30, trend_window_s=300).cells[6].startswith("NO_SCORE (engines")
    assert bed_row(short, NOW, stale_after_s=30, trend_window_s=300).cells[6].startswith("no_score (engines")
    assert "\x1b[31m" in render_table([lasting], now=NOW, color=True)
    assert "\x1b[31m" not in render_table([short], now=NOW, color=True)


def crowded_ward() -> list[BedState]:
    long_detail = "calibration site-7 active; " + "scoring without audio, vitals (audio: underfilled) " * 4
    beds = [flapping_bed("isolette-12-west-wing-long", changes=[(900, "ok"), (200, "degraded")], detail=long_detail),
            BedState("nicu", "4", status="online"), BedState("nicu", "5", status="offline")]
    beds[1].scores.append(point(6.5, 2))
    beds[2].scores.append(point(2.0, 400))
    beds[0].scores.extend([point(1.0, 240), point(3.0, 120), point(6.9, 1)])
    beds[0].status = "online"
    return beds


@pytest.mark.parametrize("width", [80, 60, 100])
def test_narrow_layout_fits_the_width(width: int) -> None:
    beds = crowded_ward()
    for health in ("short", "full"):
        text = render_table(beds, now=NOW, layout="narrow", width=width, health=health, title="neopain watch  "
                            "[NOT CONNECTED: connection refused by 10.20.30.40:8883 (TLS handshake failed)]")
        lines = text.splitlines()
        assert max(map(len, lines)) <= width, [x for x in lines if len(x) > width]
        assert lines[2].split() == ["BED", "NIPS", "T", "AGE", "IN", "HEALTH"]
    rows = {ln.split()[0]: ln for ln in render_table(beds, now=NOW, layout="narrow", width=width).splitlines()[3:]}
    assert rows["nicu/4"].split()[1] == "6.5" and "VA." in rows["nicu/4"].split()
    assert rows["nicu/5"].split()[1] == "stale" and "OFFLINE" in rows["nicu/5"] and "2.0" not in rows["nicu/5"]
    (long_row,) = [r for k, r in rows.items() if k.startswith("nicu/isol") and k.endswith("…")]  # name cut
    assert long_row.split()[1:3] == ["6.9", "↑"] and "DEGRADED" in long_row  # degraded for 200 s: an alarm
    full = render_table(beds, now=NOW, layout="narrow", width=width, health="full")
    assert " ".join(x.strip() for x in full.splitlines()).count("(audio: underfilled)") == 4  # nothing cut


def test_auto_layout_is_wide_when_it_fits() -> None:
    beds = [bed([point(2.0, 1)], status="online", health={"state": "ok"})]
    assert render_table(beds, now=NOW, layout="auto", width=200).splitlines()[1].split()[:3] == ["BED", "NIPS", "0-10"]
    narrow = render_table(beds, now=NOW, layout="auto", width=80).splitlines()
    assert narrow[2].split()[:3] == ["BED", "NIPS", "T"] and max(map(len, narrow)) <= 80
    with pytest.raises(ValueError, match="layout.*'tiny'"):
        render_table(beds, now=NOW, layout="tiny")
