"""The disk outbox on its own: durability settings, order, bound, expiry, counters across reopen."""
from __future__ import annotations

import dataclasses
import json
import logging
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from appliance.mqtt.outbox import Outbox

S = 1_000_000_000


def put(ob: Outbox, i: int, *, expiry_s: float | None = 60.0, now: int | None = None) -> int:
    return ob.put("t/score", f"p{i}".encode(), message_id=f"id{i}", expiry_s=expiry_s, now_wall_ns=now)


def test_wal_and_full_sync(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    assert ob._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ob.close()


def test_order_ack_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path) as ob:
        ids = [put(ob, i) for i in range(5)]
        assert ids == sorted(ids)
        assert ob.ack(ids[1]) and not ob.ack(ids[1])
        seqs = [ob.next_sequence() for _ in range(3)]
    with Outbox(path) as ob:
        assert [e.payload for e in ob.pending()] == [b"p0", b"p2", b"p3", b"p4"]
        assert [e.row_id for e in ob.pending(after_id=ids[2], limit=1)] == [ids[3]]
        assert ob.next_sequence() == seqs[-1] + 1  # the sequence never goes back after a restart
        new = put(ob, 9)
        assert new > ids[-1]  # ids never reused, so replay order holds across deletes and restarts


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_rows=3) as ob:
        for i in range(8):
            put(ob, i)
        assert [e.payload for e in ob.pending()] == [b"p5", b"p6", b"p7"]
        assert ob.stats().dropped_overflow == 5
    with Outbox(tmp_path / "o.db", max_rows=3) as ob:
        assert ob.stats().dropped_overflow == 5  # durable counter


def test_expired_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    t0 = 1_700_000_000 * S
    with Outbox(tmp_path / "o.db") as ob:
        put(ob, 0, expiry_s=5, now=t0)
        put(ob, 1, expiry_s=None, now=t0)
        put(ob, 2, expiry_s=5, now=t0 + 3 * S)
        live = ob.pending(now_wall_ns=t0 + 6 * S)
        assert [e.payload for e in live] == [b"p1", b"p2"]
        assert live[0].remaining_s is None and live[1].remaining_s == pytest.approx(2.0)
        assert ob.stats().dropped_expired == 1 and ob.depth() == 2
        # A wall clock stepped backwards makes rows look younger, never "negative age" or expired.
        assert len(ob.pending(now_wall_ns=t0 - 100 * S)) == 2


def test_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_rows"):
        Outbox(tmp_path / "o.db", max_rows=0)
    with Outbox(tmp_path / "o.db") as ob, pytest.raises(ValueError, match="expiry_s"):
        put(ob, 0, expiry_s=0)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(OSError, match="dir.db"):
        Outbox(tmp_path / "dir.db")


def test_concurrent_writers_and_acker(tmp_path: Path) -> None:
    """The scoring loop writes while the publisher reads and acks: nothing lost, nothing duplicated."""
    with Outbox(tmp_path / "o.db") as ob:
        written: list[int] = []
        acked: list[int] = []
        done = threading.Event()

        def writer() -> None:
            for i in range(60):
                written.append(put(ob, i))
            done.set()

        def acker() -> None:
            cursor = 0
            while not (done.is_set() and ob.depth() == 0):
                for e in ob.pending(after_id=cursor, limit=7):
                    assert ob.ack(e.row_id)
                    acked.append(e.row_id)
                    cursor = e.row_id

        threads = [threading.Thread(target=writer), threading.Thread(target=acker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert acked == written


def test_other_connection_sees_committed_rows(tmp_path: Path) -> None:
    """Committed before put() returns: a second connection (another process) sees the row at once."""
    with Outbox(tmp_path / "o.db") as ob:
        put(ob, 0)
        other = sqlite3.connect(tmp_path / "o.db")
        assert other.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1
        other.close()


def test_put_sequenced_is_atomic(tmp_path: Path) -> None:
    """Sequence and row commit together; a refused message rolls back and consumes no sequence number."""
    with Outbox(tmp_path / "o.db") as ob:
        row, seq = ob.put_sequenced("t", lambda s: (f"s{s}".encode(), f"id{s}"), expiry_s=None)
        assert seq == 0 and ob.pending()[0].payload == b"s0"

        def refuse(s: int) -> tuple[bytes, str]:
            raise ValueError("nips: out of range")

        with pytest.raises(ValueError, match="nips"):
            ob.put_sequenced("t", refuse, expiry_s=None)
        assert ob.depth() == 1
        assert ob.put_sequenced("t", lambda s: (b"x", "y"), expiry_s=None)[1] == 1


# ------------------------------------------------------------------------------------------------ damaged files
def _score_rows(ob: Outbox, n: int) -> list[tuple[int, int]]:
    """``n`` score-like rows of about 1 kB (several per page, many pages): (row id, sequence) each."""
    def build(seq: int) -> tuple[bytes, str]:
        return json.dumps({"message_id": f"m{seq}", "sequence": seq, "pad": "x" * 900}).encode(), f"m{seq}"

    return [ob.put_sequenced("t/score", build, expiry_s=600) for _ in range(n)]


def _overwrite_page(path: Path, page: int, seed: int = 1) -> None:
    """4096 random bytes over one page (the page size the outbox uses): a torn write, a bad flash block."""
    with open(path, "r+b") as fh:
        fh.seek(page * 4096)
        fh.write(random.Random(seed).randbytes(4096))


def test_truncated_outbox_is_moved_aside_and_salvaged_at_open(tmp_path: Path, caplog) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as ob:
        rows = _score_rows(ob, 120)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)

    with caplog.at_level(logging.ERROR), Outbox(path) as ob:
        (healed,) = ob.healed
        assert healed.aside.parent == tmp_path and healed.aside.name.startswith("outbox.sqlite3.corrupt-")
        assert healed.aside.exists(), "the damaged file is kept, never deleted"
        assert "malformed" in healed.reason
        kept = [e.row_id for e in ob.pending(limit=1000)]
        assert 20 < len(kept) < 120
        # the oldest rows (the first half of the file survived), in their order and with their ids; a page
        # cut through the middle can give a few more from behind the cut
        assert kept[:40] == [r for r, _ in rows[:40]] and kept == sorted(kept) and set(kept) <= {r for r, _ in rows}
        assert ob.next_sequence() == 120, "the counter continues: no sequence number is used twice"
        assert ob.put("t", b"new", message_id="new", expiry_s=None) > rows[-1][0]
    line = next(r.getMessage() for r in caplog.records if "moved aside" in r.getMessage())
    assert str(path) in line and healed.aside.name in line and f"{len(kept)} row(s) salvaged" in line
    with Outbox(path) as ob:  # the healed file is a healthy file
        assert not ob.healed and ob.depth() == len(kept) + 1


def test_random_page_in_the_live_outbox_heals_at_once_and_keeps_storing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as ob:
        rows = _score_rows(ob, 60)
        other = sqlite3.connect(path)  # move the WAL into the main file, as SQLite's auto-checkpoint does
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        other.close()
        _overwrite_page(path, path.stat().st_size // 4096 // 2)
        row, seq = _score_rows(ob, 1)[0]  # meets the damage (the bound check counts every row): heals, stores
        assert seq == 60 and row > rows[-1][0]
        (healed,) = ob.healed
        assert healed.aside.exists() and "damaged region(s) skipped" in healed.salvaged
        left = [e.row_id for e in ob.pending(limit=1000)]
        assert left[-1] == row and 50 < len(left) < 61  # one page of rows lost, every other row kept in order
        assert left == sorted(left)


def test_unreadable_counter_continues_above_any_possible_sequence(tmp_path: Path) -> None:
    from appliance.mqtt.outbox import SEQUENCE_FLOOR_PER_S

    path = tmp_path / "outbox.sqlite3"
    with Outbox(path) as ob:
        _score_rows(ob, 3)
    _overwrite_page(path, 0)  # the header: "file is not a database", nothing readable
    with Outbox(path) as ob:
        assert "not a database" in ob.healed[0].reason and ob.depth() == 0
        assert ob.next_sequence() >= int(time.time()) * SEQUENCE_FLOOR_PER_S - 1


def test_sequence_floor_holds_at_the_fastest_cadence() -> None:
    """The floor (SEQUENCE_FLOOR_PER_S x Unix time) is only above every issued number while no device can
    score faster than that: tied to the config's lowest cadence."""
    from appliance.config import ScoringSection
    from appliance.mqtt.outbox import SEQUENCE_FLOOR_PER_S

    lowest = next(f for f in dataclasses.fields(ScoringSection) if f.name == "cadence_s").metadata["min"]
    assert 1 / lowest <= SEQUENCE_FLOOR_PER_S
