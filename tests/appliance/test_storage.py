"""State files that heal (appliance/storage.py) through the calibration sessions store: a damaged file is moved
aside and salvaged by the daemon, named in errors by the tools, and a half-done heal finishes after a crash.
The outbox's own cases (truncated, a page of random bytes at run time, the sequence counter) are in
tests/appliance/mqtt/test_outbox.py."""
from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.scoring.ratings import CalibrationRecorder, SessionError, SessionStore
from appliance.storage import SALVAGE_SUFFIX, is_corruption, read_salvage

T0 = 1_714_557_600.0


def _filled_store(path: Path, ratings: int = 80) -> None:
    store = SessionStore(path)
    store.start("I01", at=T0)
    for k in range(ratings):
        store.record_score(message_id=f"m{k:03d}", t=T0 + 2 * k, raw=k % 8)
        store.rate(k % 8, "RN1", at=T0 + 2 * k + 0.5)
    store.close()


def _random_page(path: Path, page: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(page * 4096)
        fh.write(random.Random(page).randbytes(4096))


def test_damaged_sessions_file_is_named_by_tools_and_healed_by_the_daemon(tmp_path: Path) -> None:
    db = tmp_path / "calibration" / "sessions.sqlite"
    _filled_store(db)
    _random_page(db, db.stat().st_size // 4096 // 2)

    # The engineer's tools (heal=False) must not move a file the daemon may hold open: an error naming it.
    with pytest.raises(sqlite3.DatabaseError, match=rf"calibration sessions {db}: .*damaged; `neopain run`"):
        SessionStore(db)
    assert db.exists() and not list(db.parent.glob("*.corrupt-*"))

    store = SessionStore(db, heal=True)  # what the daemon's wiring opens
    (healed,) = store.healed
    assert healed.aside.exists() and str(db) in healed.describe() and healed.aside.name in healed.describe()
    counts = store.counts()
    assert counts["sessions"] == 1 and 0 < counts["ratings"] <= 80 and 0 < counts["scores"] <= 80
    assert f"{sum(counts.values())} row(s) salvaged" in healed.salvaged
    assert store.matched_pairs(), "salvaged rows keep their ids: ratings still pair with their scores"
    store.rate(3, "RN2", at=T0 + 10)  # the healed store takes ratings again
    recorder = CalibrationRecorder(store)
    assert recorder.storage_problems() == [healed.brief()] and str(db) in healed.brief()
    store.close()


def test_a_recorder_without_its_store_says_why_to_commands_and_health() -> None:
    rec = CalibrationRecorder(None, unavailable="calibration sessions unavailable: /x/sessions.sqlite: disk I/O error")
    with pytest.raises(SessionError, match="/x/sessions.sqlite: disk I/O error"):
        rec.handle(SimpleNamespace(name="calibration/rate", args={"nips": 3, "rater": "RN1"}))
    assert rec.storage_problems() == ["calibration sessions unavailable: /x/sessions.sqlite: disk I/O error"]
    rec.on_cycle(SimpleNamespace(kind="score", message={"message_id": "m"}))  # nothing to record: no error


def test_errors_that_are_not_damage_are_not_healed(tmp_path: Path) -> None:
    """A full disk or an unreadable folder is not fixed by moving the file: raised, naming the file."""
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(sqlite3.OperationalError, match=r"calibration sessions .*dir.sqlite"):
        SessionStore(tmp_path / "dir.sqlite", heal=True)
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert not is_corruption(sqlite3.OperationalError("database or disk is full"))
    assert is_corruption(sqlite3.DatabaseError("database disk image is malformed"))


def test_a_heal_cut_off_by_a_crash_finishes_at_the_next_open(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite"
    _filled_store(db, ratings=5)
    salvage = db.with_name(db.name + SALVAGE_SUFFIX)
    # Crash after the damaged file was moved aside, before the salvage took its place: the salvage is complete.
    db.rename(salvage)
    store = SessionStore(db, heal=True)
    assert store.counts()["ratings"] == 5 and not salvage.exists()
    store.close()
    # Crash while salvaging (the damaged file still in place): the half-written salvage is dropped.
    salvage.write_bytes(b"half written")
    store = SessionStore(db, heal=True)
    assert store.counts()["ratings"] == 5 and not salvage.exists() and not store.healed
    store.close()


def test_salvage_reads_past_a_truncation_and_stops_at_its_time_limit(tmp_path: Path) -> None:
    db = tmp_path / "sessions.sqlite"
    _filled_store(db)
    with open(db, "r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    tables = {"scores": ("message_id", "t", "raw"), "ratings": ("id", "nips", "rater")}
    got = read_salvage(db, tables)  # a file shorter than its header says is still read (writable_schema)
    ids = [r["rowid"] for r in got.rows["scores"]]
    assert ids == list(range(1, 81)), "the scores' pages lie in the first half"
    assert got.rows["ratings"] == [] and got.skipped_regions >= 1  # the ratings' root page was cut off
    assert "damaged region(s) skipped" in got.summary()
    assert read_salvage(db, tables, time_limit_s=0.0).count() == 0  # bounded: keeps what it read in time
