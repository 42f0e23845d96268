"""Health's debounced modality presence, driven with explicit window times (no sleeping), and its config keys."""
from __future__ import annotations

import pytest

from appliance.config import ConfigError, default, parse_config
from appliance.scoring.presence_debounce import DebounceConfig, PresenceDebounce

S = 10**9


def feed(d: PresenceDebounce, pattern: list[tuple[float, bool]]) -> list[bool]:
    """Audio present/missing at each (seconds, flag); the other modalities present. Reported audio after each."""
    return [d.update({"video": True, "audio": a, "vitals": True}, int(t * S), {"audio": "stale"})["audio"]
            for t, a in pattern]


def test_lost_only_after_missing_for_lost_after_s() -> None:
    d = PresenceDebounce(DebounceConfig(lost_after_s=10.0, back_after_s=6.0))
    out = feed(d, [(0, True), (2, False), (4, False), (10, False), (11.9, False), (12, False), (14, False)])
    # missing since t=2: not lost at 11.9 (9.9 s), lost at 12 (10 s)
    assert out == [True, True, True, True, True, False, False]
    assert d.lost() == ["audio"] and d.reason("audio") == "stale"


def test_back_only_after_present_for_back_after_s_and_a_gap_restarts_the_clock() -> None:
    d = PresenceDebounce(DebounceConfig(lost_after_s=0.0, back_after_s=6.0))
    out = feed(d, [(0, False), (2, True), (6, True), (7, False), (8, True), (13.9, True), (14, True)])
    # lost at once (0 s); back from t=2 but a gap at 7 restarts the clock at 8: back at 14, not at 8
    assert out == [False, False, False, False, False, False, True]
    assert d.lost() == [] and d.reason("audio") is None


def test_a_cry_that_comes_and_goes_never_flaps() -> None:
    d = PresenceDebounce(DebounceConfig(lost_after_s=10.0, back_after_s=10.0))
    pattern = [(2.0 * k, k % 3 != 2) for k in range(60)]  # missing in every third 2-s window for two minutes
    assert all(feed(d, pattern))


def test_the_first_window_with_anything_present_sets_the_state() -> None:
    d = PresenceDebounce(DebounceConfig(lost_after_s=10.0, back_after_s=10.0))
    nothing = {"video": False, "audio": False, "vitals": False}
    assert d.update(nothing, 0) == {"video": True, "audio": True, "vitals": True}  # still filling: sets nothing
    # the first scored window has no vitals yet (a monitor filling its 30-s window): lost from the first score
    first = d.update({"video": True, "audio": True, "vitals": False}, 2 * S, {"vitals": "underfilled"})
    assert first["vitals"] is False
    assert d.reason("vitals") == "underfilled"
    out = [d.update({"video": True, "audio": True, "vitals": True}, t * S)["vitals"] for t in (4, 13.9, 14)]
    assert out == [False, False, True]  # back after 10 s of presence: one change in all, not two


def test_out_of_order_time_changes_nothing() -> None:
    d = PresenceDebounce(DebounceConfig(lost_after_s=1.0, back_after_s=1.0))
    feed(d, [(10, False), (12, False)])
    assert d.lost() == ["audio"]
    assert feed(d, [(5, True)]) == [False]  # a window from before the last one is ignored


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), True])
def test_debounce_config_refuses_bad_values(bad: object) -> None:
    with pytest.raises(ValueError, match="lost_after_s"):
        DebounceConfig(lost_after_s=bad)  # type: ignore[arg-type]


def test_config_keys_have_one_default_and_are_validated() -> None:
    assert DebounceConfig().lost_after_s == default("scoring", "modality_lost_after_s")
    assert DebounceConfig().back_after_s == default("scoring", "modality_back_after_s")
    cfg = parse_config("[scoring]\nmodality_lost_after_s = 4\nmodality_back_after_s = 0\n")
    assert (cfg.scoring.modality_lost_after_s, cfg.scoring.modality_back_after_s) == (4.0, 0.0)
    with pytest.raises(ConfigError, match=r"scoring\.modality_back_after_s.*-3"):
        parse_config("[scoring]\nmodality_back_after_s = -3\n")
