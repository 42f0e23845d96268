"""The web station's parts on their own: the history file (restart, de-duplication, retention, a damaged file),
users and passwords, the rating command as the device checks it, the chart and the bed view's stale rule.
The whole station in a browser is ``test_web_station.py``."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from appliance.devtools.demo import _free_port
from appliance.mqtt import messages
from appliance.station.board import STALE_AFTER_S, BedState, ScorePoint
from appliance.station.web import bands, chart, commands, nips_items
from appliance.station.web.auth import MAX_FAILURES, Sessions, UserError, UserStore
from appliance.station.web.history import Bucket, Event, HistoryStore, Rating, ScoreRow
from appliance.station.web.view import bed_view

T0 = 1_800_000_000.0


def row(k: int, *, bed: str = "b1", t: float | None = None, nips: float = 2.0) -> ScoreRow:
    return ScoreRow(message_id=f"m{bed}{k}", site="s", bed=bed, device_id="d1", sequence=k,
                    t=T0 + 2 * k if t is None else t, received=T0 + 2 * k + 0.1, created=T0 + 2 * k + 0.05,
                    nips=nips, intensity=nips * 10 / 7, confidence=0.8,
                    items={n: nips * m / 7 for n, m in messages.NIPS_ITEMS.items()},
                    modalities=("video", "audio"), calibration="cal-1", model="m")


def test_history_survives_a_restart_and_stores_each_score_once(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3")
    new = store.write([row(k) for k in range(10)], [Event("s", "b1", T0, "health", "degraded", "no audio")])
    assert len(new) == 10
    assert store.write([row(3), row(10)]) == [row(10)]  # a redelivery is stored once
    store.close()
    again = HistoryStore(tmp_path / "h.sqlite3")
    assert again.count() == 11 and again.count("events") == 1
    assert again.scores("s", "b1", T0, T0 + 100) == [row(k) for k in range(11)]
    assert [r.message_id for r in again.latest_scores()] == ["mb110"]
    buckets = again.buckets("s", "b1", T0, T0 + 22, 11)
    assert [b.count for b in buckets] == [1] * 11 and buckets[4].nips == pytest.approx(2.0)
    assert buckets[0].items is not None and buckets[0].items["cry"] == pytest.approx(2.0 * 2 / 7)
    with pytest.raises(ValueError, match="table: 'users' is not one of"):
        again.count("users")


def test_history_retention_deletes_only_old_rows(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "h.sqlite3", retention_s=3600)
    store.write([row(0, t=T0 - 7200), row(1, t=T0 - 10)], [Event("s", "b1", T0 - 7200, "status", "online")])
    store.add_rating(Rating("s", "b1", T0 - 7200, 3, {"cry": 1}, "rn", "c1", True))
    assert store.prune(now=T0) == 3 and store.prune(now=T0) == 0
    assert [r.message_id for r in store.scores("s", "b1", 0, T0 + 1)] == ["mb11"]
    with pytest.raises(ValueError, match="retention: must be > 0"):
        HistoryStore(tmp_path / "x.sqlite3", retention_s=0)


def test_a_damaged_history_is_moved_aside_and_the_station_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    store = HistoryStore(path)
    store.write([row(k) for k in range(50)])
    store.close()
    with open(path, "r+b") as f:  # garbage over the second page onwards
        f.seek(4096)
        f.write(b"\xde\xad" * 8000)
    healed = HistoryStore(path)
    assert len(healed.healed) == 1 and healed.healed[0].aside.exists()
    assert ".corrupt-" in healed.healed[0].aside.name
    healed.write([row(100)])  # usable at once
    assert healed.count() >= 1


def test_users_hash_passwords_and_refuse_wrong_ones(tmp_path: Path) -> None:
    # Cheap argon2id parameters: this checks what is stored and compared, not the cost (the CLI test below and
    # the browser test use the defaults).
    users = UserStore(tmp_path / "users.sqlite3", hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    users.add("nurse.kim", "correct horse battery")
    stored = sqlite3.connect(tmp_path / "users.sqlite3").execute("SELECT hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert users.verify("nurse.kim", "correct horse battery")
    assert not users.verify("nurse.kim", "correct horse batterY") and not users.verify("nobody", "x" * 12)
    with pytest.raises(UserError, match="exists already"):
        users.add("nurse.kim", "another password")
    with pytest.raises(UserError, match="password: 5 characters, at least 10"):
        users.add("rn2", "short")
    with pytest.raises(UserError, match="user name: 'a b' is not"):
        users.add("a b", "long enough pass")
    users.set_password("nurse.kim", "a new long password")
    assert users.verify("nurse.kim", "a new long password") and not users.verify("nurse.kim", "correct horse battery")
    assert (tmp_path / "users.sqlite3").stat().st_mode & 0o077 == 0
    sessions = Sessions()
    for _ in range(MAX_FAILURES):
        assert not sessions.locked_out("rn")
        sessions.failed("rn")
    assert sessions.locked_out("rn") and not sessions.locked_out("nurse.kim")
    token, session = sessions.open("nurse.kim")
    assert sessions.get(token) is session and sessions.get("forged") is None
    sessions.close(token)
    assert sessions.get(token) is None


@pytest.mark.slow
def test_user_command_reads_the_password_from_stdin_never_argv(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "appliance.cli", "station", "user"]
    ok = subprocess.run([*cmd, "add", "rn1", "--state-dir", str(tmp_path)], input="a long password\n",
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert UserStore(tmp_path / "users.sqlite3").verify("rn1", "a long password")
    bad = subprocess.run([*cmd, "add", "rn2", "--state-dir", str(tmp_path)], input="", capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "stdin is empty" in bad.stderr
    usage = subprocess.run([*cmd, "add", "rn3", "pw-on-argv", "--state-dir", str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "unrecognized arguments: pw-on-argv" in usage.stderr


def test_rating_command_passes_the_devices_own_checks() -> None:
    key = bytes(range(32))
    cmd = commands.rate_command("nicu", "bed-3", 5, "nurse.kim", key=key)
    assert cmd.topic == "neopain/nicu/bed-3/cmd/calibration/rate" and cmd.signed
    guard = messages.CommandGuard(bed="bed-3", key=key)
    got = guard.check("calibration/rate", cmd.payload, topic=cmd.topic)
    assert got.args == {"nips": 5, "rater": "nurse.kim", "at": commands.utc_text(cmd.at)}
    with pytest.raises(messages.CommandError, match="already"):  # executed at most once
        guard.check("calibration/rate", cmd.payload, topic=cmd.topic)
    with pytest.raises(messages.CommandError) as other_bed:  # bound to its bed
        messages.CommandGuard(bed="bed-4", key=key).check("calibration/rate", cmd.payload, topic=cmd.topic)
    assert other_bed.value.kind == "malformed"
    unsigned = commands.rate_command("nicu", "bed-3", 2, "rn", key=None)
    assert messages.CommandGuard(bed="bed-3").check("calibration/rate", unsigned.payload,
                                                    topic=unsigned.topic).args["nips"] == 2
    with pytest.raises(ValueError, match="nips: expected a whole NIPS 0-7, got 8"):
        commands.rate_command("nicu", "bed-3", 8, "rn", key=None)


def test_rating_items_are_checked_by_name_and_range() -> None:
    form = {"facial_expression": "1", "cry": "2", "breathing": "0", "arms": "1", "legs": "0", "state_of_arousal": "1"}
    assert sum(nips_items.check_items(form).values()) == 5
    with pytest.raises(ValueError, match=r"Cry \(cry\): 3 is outside 0-2"):
        nips_items.check_items({**form, "cry": "3"})
    with pytest.raises(ValueError, match=r"Legs \(legs\): not scored"):
        nips_items.check_items({k: v for k, v in form.items() if k != "legs"})


def test_bands_follow_the_rounded_nips() -> None:
    assert [bands.band_of(v).key for v in (0.0, 2.49, 2.5, 4.49, 4.5, 7.0)] == \
        ["low", "low", "moderate", "moderate", "severe", "severe"]
    assert [b.label for b in bands.NIPS_BANDS] == ["0-2", "3-4", "> 4"]
    css = bands.stylesheet()
    assert all(f".band-{b.key}{{background:{b.color}" in css for b in bands.NIPS_BANDS) and ".band-stale" in css


def test_bed_view_never_shows_a_stale_score_as_current() -> None:
    now = datetime.fromtimestamp(T0, timezone.utc)
    point = ScorePoint("m1", 5.0, 7.1, window_end=now - timedelta(seconds=5), received=now - timedelta(seconds=4),
                       modalities=("video",))
    bed = BedState("s", "b1", deque([point]), status="online", health={"state": "degraded", "detail": "no audio"})
    fresh = bed_view(bed, None, now, stale_after_s=STALE_AFTER_S)
    assert fresh["nips"] == "5.0" and fresh["band"] == "severe" and not fresh["stale"]
    assert fresh["health"] == "degraded" and fresh["health_detail"] == "no audio"
    late = bed_view(bed, None, now + timedelta(seconds=STALE_AFTER_S), stale_after_s=STALE_AFTER_S)
    assert late["stale"] and late["nips"] is None and late["band"] == "stale" and late["trend"] == " "
    never = bed_view(BedState("s", "b2"), None, now, stale_after_s=STALE_AFTER_S)
    assert never["never"] and never["nips"] is None and never["age"] == "never scored"


def test_chart_breaks_the_line_at_gaps_and_draws_the_confidence_band() -> None:
    def bucket(t: float, nips: float, conf: float) -> Bucket:
        return Bucket(t, t + 10, 5, nips, nips, nips, conf, None)

    run = [bucket(T0 + 10 * k, 3.0, 1.0) for k in range(5)] + [bucket(T0 + 600 + 10 * k, 4.0, 0.5) for k in range(3)]
    assert [len(s) for s in chart.segments(run, max_gap_s=30)] == [5, 3]
    assert chart.half_width(1.0) == 0 and chart.half_width(0.0) == 3.5 and chart.half_width(0.5) == 1.75
    svg = chart.render(run, [Event("s", "b", T0 + 300, "health", "no_score", "engines failed"),
                             Event("s", "b", T0 + 400, "calibration", "cal-2", "was cal-1")],
                       [Rating("s", "b", T0 + 50, 4, {}, "rn<1>", "c", True)], since=T0, until=T0 + 3600,
                       max_gap_s=30)
    assert svg.count('class="nips-line"') == 2 and svg.count('class="confidence"') == 2
    assert 'data-points="8"' in svg and "calibration cal-2" in svg and "health-no_score" in svg
    assert 'data-rater="rn&lt;1&gt;"' in svg and "<1>" not in svg  # outside text is escaped
    spans = chart.health_spans([Event("s", "b", T0 + 10, "health", "ok"), Event("s", "b", T0 + 20, "status", "offline"),
                                Event("s", "b", T0 + 30, "status", "online")], T0, T0 + 40)
    assert [(a - T0, b - T0, s) for a, b, s, _ in spans] == [(0, 10, "unknown"), (10, 20, "ok"), (20, 30, "offline"),
                                                            (30, 40, "ok")]


def test_a_restarted_station_shows_what_it_had_stored(tmp_path: Path) -> None:
    from appliance.station.board import Board
    from appliance.station.web.ingest import Ingest
    from appliance.station.web.live import Hub

    now = time.time()
    history = HistoryStore(tmp_path / "h.sqlite3")
    history.write([row(k, t=now - 100 + k, nips=1.0 + k) for k in range(3)] + [row(0, bed="b2", t=now - 1, nips=3.0)],
                  [Event("s", "b1", now - 50, "calibration", "cal-2", "was cal-1")])
    history.close()
    ingest = Ingest(Board(), HistoryStore(tmp_path / "h.sqlite3"), Hub(), stale_after_s=30.0)
    assert ingest.seed() == 2
    views = {v["key"]: v for v in ingest.views()}
    assert views["s/b1"]["stale"] and views["s/b1"]["nips"] is None  # 98 s old: stale, not "3.0"
    assert views["s/b1"]["calibration"] == "cal-1" and views["s/b1"]["modalities"] == ["video", "audio"]
    assert views["s/b2"]["nips"] == "3.0" and not views["s/b2"]["stale"]


@pytest.mark.slow
def test_https_station_sets_a_secure_cookie_and_listens_on_localhost_only(broker, tmp_path: Path) -> None:
    import http.client
    import ssl
    import urllib.parse

    import psutil

    from appliance.devtools.station_rig import PASSWORD, USER, add_user, start_station
    from tests.appliance.mqtt.pki import make_pki

    make_pki(tmp_path, "web")
    add_user(tmp_path / "state")
    port = _free_port()
    station = start_station(tmp_path, broker.port, port, "--https-cert", str(tmp_path / "web-server.crt"),
                            "--https-key", str(tmp_path / "web-server.key"), "--no-confirm")
    try:
        assert "https://127.0.0.1:" in (tmp_path / "station.log").read_text()
        listening = [c.laddr for c in psutil.Process(station.pid).net_connections("tcp") if c.status == "LISTEN"]
        assert [a.ip for a in listening if a.port == port] == ["127.0.0.1"]
        tls = ssl.create_default_context(cafile=str(tmp_path / "web-ca.crt"))

        def post_login(password: str) -> http.client.HTTPResponse:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=30)
            conn.request("POST", "/login", urllib.parse.urlencode({"username": USER, "password": password}),
                         {"Content-Type": "application/x-www-form-urlencoded"})
            return conn.getresponse()

        wrong = post_login(PASSWORD + "!")
        assert wrong.status == 401 and wrong.getheader("Set-Cookie") is None
        ok = post_login(PASSWORD)
        cookie = ok.getheader("Set-Cookie") or ""
        assert ok.status == 303 and cookie.startswith("neopain_session=")
        assert {"Secure", "HttpOnly", "SameSite=strict"} <= {p.strip() for p in cookie.split(";")}
        assert "max-age" in (ok.getheader("Strict-Transport-Security") or "")
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # no plain HTTP on the TLS port
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/login")
            plain.getresponse().read()
    finally:
        station.terminate()
        station.wait(20)
    # uvicorn ends on SIGTERM by raising it again after its shutdown; the station's own shutdown ran first
    assert "station: stopped; 0 score(s) stored in this run" in (tmp_path / "station.log").read_text()


def test_a_flapping_device_is_counted_not_alarmed() -> None:
    from appliance.station.board import HEALTH_ALARM_AFTER_S, Board

    now = datetime.fromtimestamp(T0, timezone.utc)
    board = Board()

    def health(bed: str, state: str, ago_s: float) -> None:
        msg = messages.build_health(device_id="d", sources={"microphone": state == "ok"}, state=state,
                                    detail=None if state == "ok" else "scoring without audio")
        board.ingest(f"neopain/s/{bed}/health", messages.encode(msg), now - timedelta(seconds=ago_s))

    for k, state in enumerate(["ok", "degraded", "ok", "degraded", "ok", "degraded"]):  # a cry that comes and goes
        health("b1", state, 50 - 8 * k)
    health("b2", "degraded", HEALTH_ALARM_AFTER_S + 5)  # lasting: an alarm
    views = {b.bed: bed_view(b, None, now, stale_after_s=STALE_AFTER_S) for b in board.snapshot()}
    assert views["b1"]["health"] == "degraded" and not views["b1"]["health_alarm"]
    assert views["b1"]["health_changes"] == 5
    assert views["b2"]["health"] == "degraded" and views["b2"]["health_alarm"]
