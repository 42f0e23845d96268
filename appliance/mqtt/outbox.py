"""A durable, bounded, ordered disk outbox for score messages (SQLite, WAL, synchronous=FULL).

Why: paho keeps in-flight QoS 1 messages in memory only, so a daemon restart or power cut during a broker
outage would silently lose scores. Every score is therefore committed here *before* it is handed to MQTT and
deleted only when the broker's PUBACK arrives; whatever is left is replayed, oldest first, on the next
connection — in this process or the next one.

Two things must not grow without limit or lie: the outbox is bounded (``max_rows``; on overflow the *oldest*
rows are dropped, since a fresh score is worth more than an old one, and every drop is counted durably), and
each row carries an expiry: a row older than its expiry is dropped (counted) rather than delivered late
looking current. Ages use the monotonic clock while the machine has not rebooted since the row was written
(the row keeps its monotonic stamp and the kernel's boot id), so an NTP step of the wall clock neither
expires queued scores (a +1 h step used to drop every row waiting through a broker outage) nor keeps stale
ones alive; only rows from an earlier boot fall back to wall-clock age (a wall clock stepped backwards makes
such a row look younger, never negative).

The per-device message sequence counter lives here too, in the same durable file, so sequence numbers keep
increasing across restarts (gaps are possible after a crash; repeats are not).
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- AUTOINCREMENT: ids never reused, so order survives deletes
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    message_id TEXT NOT NULL,
    created_wall_ns INTEGER NOT NULL,
    expiry_s REAL,                           -- NULL: never expires
    created_mono_ns INTEGER,                 -- time.monotonic_ns() at insert; NULL: unknown (use wall age)
    boot_id TEXT                             -- the kernel boot the monotonic stamp belongs to
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_COUNTERS = ("dropped_overflow", "dropped_expired", "next_sequence")
_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def _boot_id() -> str | None:
    """This boot's id (monotonic stamps are only comparable within one boot); None where there is none."""
    try:
        return Path(_BOOT_ID_FILE).read_text(encoding="ascii").strip() or None
    except OSError:
        return None


@dataclass(frozen=True)
class OutboxEntry:
    """One stored message; ``remaining_s`` is its time left to live at read time (None: no expiry)."""

    row_id: int
    topic: str
    payload: bytes
    message_id: str
    created_wall_ns: int
    expiry_s: float | None
    remaining_s: float | None


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    dropped_overflow: int
    dropped_expired: int
    oldest_age_s: float | None


class Outbox:
    """Thread-safe SQLite outbox. One connection, one lock: callers are the scoring loop and the publisher."""

    def __init__(self, path: str | os.PathLike[str], *, max_rows: int = 10_000) -> None:
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"outbox max_rows: must be a positive integer, got {max_rows!r}")
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._boot_id = _boot_id()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: explicit BEGIN IMMEDIATE/COMMIT, so each put is one durable transaction.
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode WAL refused (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            for column, kind in (("created_mono_ns", "INTEGER"), ("boot_id", "TEXT")):
                if column not in columns:  # a file written before monotonic ages: rows keep wall-clock age
                    self._db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
            for name in _COUNTERS:
                self._db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))
        except (sqlite3.Error, OSError) as exc:
            raise OSError(f"outbox {self.path}: cannot open ({exc})") from exc

    # ------------------------------------------------------------------------------------------ writing
    def next_sequence(self) -> int:
        """Reserve and return the next per-device sequence number (durable before it is returned)."""
        with self._lock, self._tx():
            value = self._counter("next_sequence")
            self._db.execute("UPDATE counters SET value = ? WHERE name = 'next_sequence'", (value + 1,))
        return value

    def put(
        self,
        topic: str,
        payload: bytes,
        *,
        message_id: str,
        expiry_s: float | None,
        now_wall_ns: int | None = None,
    ) -> int:
        """Store one message durably and return its row id; drops (and counts) the oldest rows over the bound."""
        if expiry_s is not None and not expiry_s > 0:
            raise ValueError(f"outbox expiry_s: must be > 0 or None, got {expiry_s!r}")
        with self._lock, self._tx():
            return self._insert(topic, payload, message_id, expiry_s, now_wall_ns)

    def put_sequenced(
        self,
        topic: str,
        build: Callable[[int], tuple[bytes, str]],
        *,
        expiry_s: float | None,
        now_wall_ns: int | None = None,
    ) -> tuple[int, int]:
        """Reserve the next sequence number and store ``build(sequence) -> (payload, message_id)`` atomically.

        One transaction, so one fsync per score instead of two, and a ``build`` that raises (a refused score)
        rolls back without consuming a sequence number. Returns ``(row_id, sequence)``.
        """
        if expiry_s is not None and not expiry_s > 0:
            raise ValueError(f"outbox expiry_s: must be > 0 or None, got {expiry_s!r}")
        with self._lock, self._tx():
            sequence = self._counter("next_sequence")
            payload, message_id = build(sequence)
            self._db.execute("UPDATE counters SET value = ? WHERE name = 'next_sequence'", (sequence + 1,))
            return self._insert(topic, payload, message_id, expiry_s, now_wall_ns), sequence

    def _insert(self, topic: str, payload: bytes, message_id: str, expiry_s: float | None,
                now_wall_ns: int | None) -> int:
        """INSERT plus drop-oldest over the bound; the caller holds the lock and the transaction."""
        created = time.time_ns() if now_wall_ns is None else now_wall_ns
        # An explicit wall time (tests, imports) has no monotonic counterpart: that row ages by the wall clock.
        mono = time.monotonic_ns() if now_wall_ns is None and self._boot_id else None
        cur = self._db.execute(
            "INSERT INTO outbox(topic, payload, message_id, created_wall_ns, expiry_s, created_mono_ns, boot_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (topic, sqlite3.Binary(payload), message_id, created, expiry_s, mono, self._boot_id if mono else None),
        )
        row_id = int(cur.lastrowid or 0)
        depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        excess = depth - self.max_rows
        if excess > 0:
            self._db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)
            )
            self._bump("dropped_overflow", excess)
        return row_id

    def ack(self, row_id: int) -> bool:
        """Delete a delivered row (PUBACK). False if it was already gone (dropped, or acked twice)."""
        with self._lock, self._tx():
            cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        return cur.rowcount > 0

    # ------------------------------------------------------------------------------------------ reading
    def pending(self, *, after_id: int = 0, limit: int = 100, now_wall_ns: int | None = None) -> list[OutboxEntry]:
        """Up to ``limit`` live rows with id > ``after_id``, oldest first; expired rows met are dropped (counted)."""
        now = time.time_ns() if now_wall_ns is None else now_wall_ns
        out: list[OutboxEntry] = []
        with self._lock:
            while len(out) < limit:
                rows = self._db.execute(
                    "SELECT id, topic, payload, message_id, created_wall_ns, expiry_s, created_mono_ns, boot_id "
                    "FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit - len(out)),
                ).fetchall()
                if not rows:
                    break
                expired: list[int] = []
                for row_id, topic, payload, message_id, created, expiry, mono, boot in rows:
                    after_id = row_id
                    remaining = None
                    if expiry is not None:
                        remaining = expiry - self._age_s(created, mono, boot, now)
                        if remaining <= 0:
                            expired.append(row_id)
                            continue
                    out.append(OutboxEntry(row_id, topic, bytes(payload), message_id, created, expiry, remaining))
                if expired:
                    with self._tx():
                        self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in expired])
                        self._bump("dropped_expired", len(expired))
        return out

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def stats(self) -> OutboxStats:
        """Depth, durable drop counters (since the file was created) and age of the oldest row."""
        with self._lock:
            depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            oldest = self._db.execute(
                "SELECT created_wall_ns, created_mono_ns, boot_id FROM outbox ORDER BY id LIMIT 1").fetchone()
            age = None if oldest is None else self._age_s(*oldest, time.time_ns())
            return OutboxStats(int(depth), self._counter("dropped_overflow"), self._counter("dropped_expired"), age)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- internals
    def _age_s(self, created_wall_ns: int, created_mono_ns: int | None, boot_id: str | None, now_wall_ns: int) -> float:
        """A row's age: monotonic when it was written in this boot, else wall clock (never negative)."""
        if created_mono_ns is not None and boot_id is not None and boot_id == self._boot_id:
            return max(0, time.monotonic_ns() - created_mono_ns) / 1e9
        return max(0, now_wall_ns - created_wall_ns) / 1e9

    def _counter(self, name: str) -> int:
        return int(self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def _bump(self, name: str, n: int) -> None:
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (n, name))

    def _tx(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one fsync'd unit under synchronous=FULL."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
