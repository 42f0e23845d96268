"""Calibration sessions on the device: ratings and raw scores stored in SQLite and matched by time, through
the store, the CLI and the MQTT command recorder."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from appliance.mqtt import messages
from appliance.scoring.pipeline import CycleResult
from appliance.scoring.ratings import COMMANDS, CalibrationRecorder, SessionError, SessionStore, parse_time
from calibration.sessions import add_rate_arguments, run_rate

T0 = parse_time("2024-05-01T10:00:00Z")


def score_message(t: float, nips: float, calibration_version: str = "uncalibrated") -> dict:
    def iso(s: float) -> str:
        return datetime.fromtimestamp(s, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return messages.build_score(device_id="bed-1", sequence=1, window_start_ns=0, window_end_ns=10, nips=nips,
                                confidence=0.5, modalities={"video": {"used": True, "weight": 1.0}},
                                model_version="m-A", calibration_version=calibration_version, latency_ms={},
                                window_start_utc=iso(t - 10), window_end_utc=iso(t))


def test_store_matches_ratings_to_the_nearest_score(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.sqlite")
    assert store.record_score(message_id="m0", t=T0, raw=2.0) is False  # no session: nothing kept
    with pytest.raises(SessionError, match="no calibration session covers 2024-05-01 10:00:00Z"):
        store.rate(3, "RN1", at=T0)
    store.start("I01", at=T0)
    for k in range(10):  # a score every 2 s, raw = k / 2
        store.record_score(message_id=f"a{k}", t=T0 + 2 * k, raw=k / 2)
    store.rate(4, "RN1", at=T0 + 7.2)      # nearest score: t0+8 (a4, raw 2.0)
    store.rate(5, "RN2", at="2024-05-01T10:00:01+00:00")  # nearest: a0 or a1 -> a0 (tie broken by time)
    store.rate(1, "RN1", at=T0 + 60)        # 42 s after the last score: unmatched
    store.start("I02", at=T0 + 100)         # closes I01's session
    store.record_score(message_id="b0", t=T0 + 101, raw=6.0)
    store.rate(7, "RN3", at=T0 + 100.5)
    pairs = store.matched_pairs()
    assert [(p.message_id, p.raw, p.nips, p.infant, p.rater) for p in pairs] == [
        ("a0", 0.0, 5.0, "I01", "RN2"), ("a4", 2.0, 4.0, "I01", "RN1"), ("b0", 6.0, 7.0, "I02", "RN3")]
    assert store.unmatched_ratings() == 1 and len(store.matched_pairs(max_gap_s=60)) == 4
    assert [s.infant for s in store.sessions()] == ["I01", "I02"] and store.sessions()[0].stopped == T0 + 100
    with pytest.raises(SessionError, match="nips: expected an integer NIPS total 0-7"):
        store.rate(8, "RN1")
    with pytest.raises(SessionError, match="not ISO 8601"):
        store.rate(3, "RN1", at="yesterday")
    store.close()
    # durable: a new process sees the same pairs
    assert len(SessionStore(tmp_path / "s.sqlite").matched_pairs()) == 3


def test_recorder_handles_mqtt_commands_and_scored_cycles(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "s.sqlite")
    rec = CalibrationRecorder(store).start()
    known = messages.KNOWN_COMMANDS | frozenset(COMMANDS)

    def cmd(name: str, args: dict) -> messages.Command:
        return messages.parse_command(name, json.dumps(args).encode(), known=known)

    rec.on_command(cmd("calibration/start", {"infant": "I07", "at": T0}))
    for k in range(5):
        rec.on_cycle(CycleResult("score", 0, score_message(T0 + 2 * k, nips=1.0 + k)))
    rec.on_cycle(CycleResult("score", 0, score_message(T0 + 3, 5.0, calibration_version="site-v1")))  # no raw
    rec.on_cycle(CycleResult("no_score", 0, None))
    rec.on_command(cmd("calibration/rate", {"nips": 4, "rater": "RN5", "at": "2024-05-01T10:00:04.5Z"}))
    rec.on_command(cmd("calibration/rate", {"nips": 4}))  # malformed: logged, counted, the writer goes on
    rec.on_command(cmd("calibration/stop", {"at": T0 + 20}))
    assert rec.flush()
    pairs = store.matched_pairs()
    assert [(p.raw, p.nips, p.infant, p.rater) for p in pairs] == [(3.0, 4.0, "I07", "RN5")]
    assert rec.scores_recorded == 5 and rec.skipped_no_raw == 1 and rec.handled == 3
    assert any("missing key 'rater'" in e for e in rec.errors)
    assert store.active() is None
    rec.stop()
    store.close()


def test_cli_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.sqlite"
    parser = argparse.ArgumentParser()
    add_rate_arguments(parser)
    args = parser.parse_args(["--nips", "3", "--rater", "RN1", "--db", str(db)])
    assert run_rate(args) == 2 and "start one" in capsys.readouterr().err
    store = SessionStore(db)
    store.start("I01")
    assert run_rate(args) == 0
    assert store.counts()["ratings"] == 1
    store.close()
