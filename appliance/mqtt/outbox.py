"""A durable, bounded, ordered disk outbox for score messages (SQLite, WAL, synchronous=FULL).

Why: paho keeps in-flight QoS 1 and 2 messages in memory only, so a daemon restart or power cut during a
broker outage would silently lose scores. Every score is therefore committed here *before* it is handed to MQTT
and deleted only when the broker has it (PUBACK at QoS 1, PUBCOMP at QoS 2); whatever is left is replayed, oldest first, on the next
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

A damaged file heals (``appliance/storage.py``): at open, or when an operation meets corruption at run time,
it is moved aside, the readable rows are salvaged into a fresh file with their row ids (so replay order and
the publisher's in-flight map hold) and the operation is retried. The sequence counter then continues above
the highest of: the damaged file's counter, every salvaged score's ``sequence``, and the highest number this
process issued. When the counter could not be read and nothing was issued yet, it jumps to
``SEQUENCE_FLOOR_PER_S`` x the Unix time: no device can have issued more, since a score takes at least
``1 / SEQUENCE_FLOOR_PER_S`` s (``scoring.cadence_s`` >= 0.25; ``tests/appliance/mqtt/test_outbox.py``
checks the bound). A score whose row was on a damaged page is lost; the journal line says how many rows were
kept and how many damaged regions were skipped.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from appliance.storage import Healed, Salvage, StateFile, copy_rows

log = logging.getLogger(__name__)
T = TypeVar("T")

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
_COLUMNS = ("id", "topic", "payload", "message_id", "created_wall_ns", "expiry_s", "created_mono_ns", "boot_id")
_SALVAGE_TABLES = {"outbox": _COLUMNS, "counters": ("name", "value"), "sqlite_sequence": ("name", "seq")}
#: Scores per second no device can exceed (``scoring.cadence_s`` is at least 0.25 s): the sequence floor.
SEQUENCE_FLOOR_PER_S = 4


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
        self._boot_id = _boot_id()
        self._issued_max = -1  # highest sequence this process handed out (a heal continues above it)
        self._row_max = 0  # highest row id this process wrote or read (a heal keeps new ids above it)
        try:
            self._file = StateFile(self.path, what="outbox", prepare=_prepare, tables=_SALVAGE_TABLES,
                                   restore=self._restore)
        except (sqlite3.Error, OSError) as exc:
            text = str(exc).removeprefix(f"outbox {self.path}: ")
            raise OSError(f"outbox {self.path}: cannot open ({text})") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        return self._file.db

    @property
    def healed(self) -> list[Healed]:
        """Damaged files moved aside and salvaged by this process (for health and the journal)."""
        return list(self._file.healed)

    # ------------------------------------------------------------------------------------------ writing
    def next_sequence(self) -> int:
        """Reserve and return the next per-device sequence number (durable before it is returned)."""

        def reserve(db: sqlite3.Connection) -> int:
            with _Transaction(db):
                value = self._counter("next_sequence")
                db.execute("UPDATE counters SET value = ? WHERE name = 'next_sequence'", (value + 1,))
            return value

        value = self._run(reserve)
        self._issued_max = max(self._issued_max, value)
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

        def insert(db: sqlite3.Connection) -> int:
            with _Transaction(db):
                return self._insert(topic, payload, message_id, expiry_s, now_wall_ns)

        return self._run(insert)

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

        def store(db: sqlite3.Connection) -> tuple[int, int]:
            with _Transaction(db):
                sequence = self._counter("next_sequence")
                payload, message_id = build(sequence)
                db.execute("UPDATE counters SET value = ? WHERE name = 'next_sequence'", (sequence + 1,))
                return self._insert(topic, payload, message_id, expiry_s, now_wall_ns), sequence

        row_id, sequence = self._run(store)
        self._issued_max = max(self._issued_max, sequence)
        return row_id, sequence

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
        self._row_max = max(self._row_max, row_id)
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

        def delete(db: sqlite3.Connection) -> bool:
            with _Transaction(db):
                return db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount > 0

        return self._run(delete)

    # ------------------------------------------------------------------------------------------ reading
    def pending(self, *, after_id: int = 0, limit: int = 100, now_wall_ns: int | None = None) -> list[OutboxEntry]:
        """Up to ``limit`` live rows with id > ``after_id``, oldest first; expired rows met are dropped (counted)."""
        now = time.time_ns() if now_wall_ns is None else now_wall_ns

        def read(db: sqlite3.Connection) -> list[OutboxEntry]:
            out: list[OutboxEntry] = []
            cursor = after_id
            while len(out) < limit:
                rows = db.execute(
                    "SELECT id, topic, payload, message_id, created_wall_ns, expiry_s, created_mono_ns, boot_id "
                    "FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                    (cursor, limit - len(out)),
                ).fetchall()
                if not rows:
                    break
                expired: list[int] = []
                for row_id, topic, payload, message_id, created, expiry, mono, boot in rows:
                    cursor = row_id
                    self._row_max = max(self._row_max, row_id)
                    remaining = None
                    if expiry is not None:
                        remaining = expiry - self._age_s(created, mono, boot, now)
                        if remaining <= 0:
                            expired.append(row_id)
                            continue
                    out.append(OutboxEntry(row_id, topic, bytes(payload), message_id, created, expiry, remaining))
                if expired:
                    with _Transaction(db):
                        db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in expired])
                        self._bump("dropped_expired", len(expired))
            return out

        return self._run(read)

    def depth(self) -> int:
        return self._run(lambda db: int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]))

    def stats(self) -> OutboxStats:
        """Depth, durable drop counters (since the file was created) and age of the oldest row."""
        def read(db: sqlite3.Connection) -> OutboxStats:
            depth = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            oldest = db.execute(
                "SELECT created_wall_ns, created_mono_ns, boot_id FROM outbox ORDER BY id LIMIT 1").fetchone()
            age = None if oldest is None else self._age_s(*oldest, time.time_ns())
            return OutboxStats(int(depth), self._counter("dropped_overflow"), self._counter("dropped_expired"), age)

        return self._run(read)

    def close(self) -> None:
        self._file.close()

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

    def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Every database operation goes through the state file: one lock, healed on corruption."""
        return self._file.run(operation)

    # ---------------------------------------------------------------------------------------- healing
    def _restore(self, db: sqlite3.Connection, salvage: Salvage) -> str:
        """Salvaged rows into the fresh file (same row ids, so order and in-flight ids hold) and a sequence
        counter that cannot repeat a number (see the module docstring)."""
        rows = [r for r in salvage.rows.get("outbox", []) if _plausible(r)]
        for r in rows:
            r["id"] = r["rowid"]
        kept = copy_rows(db, "outbox", rows, _COLUMNS)
        counters = {r.get("name"): r.get("value") for r in salvage.rows.get("counters", [])
                    if isinstance(r.get("value"), int)}
        for name in ("dropped_overflow", "dropped_expired"):
            if name in counters:
                db.execute("UPDATE counters SET value = ? WHERE name = ?", (counters[name], name))
        seen = [self._issued_max] + [s for s in (_sequence_of(r["payload"]) for r in rows) if s is not None]
        next_sequence = max(seen) + 1
        if "next_sequence" in counters:
            next_sequence = max(next_sequence, counters["next_sequence"])
        elif self._issued_max < 0:
            floor = int(time.time() * SEQUENCE_FLOOR_PER_S)
            log.error("outbox %s: the sequence counter was not readable; sequence numbers continue at %d "
                      "(%d x Unix time: above any number a device can have issued)", self.path,
                      max(next_sequence, floor), SEQUENCE_FLOOR_PER_S)
            next_sequence = max(next_sequence, floor)
        db.execute("UPDATE counters SET value = ? WHERE name = 'next_sequence'", (next_sequence,))
        old_seq = [r.get("seq") for r in salvage.rows.get("sqlite_sequence", [])
                   if r.get("name") == "outbox" and isinstance(r.get("seq"), int)]
        high = max([self._row_max, *old_seq, *(r["id"] for r in rows)])
        if high > 0:  # new rows get ids above every id handed out, as AUTOINCREMENT promises
            db.execute("DELETE FROM sqlite_sequence WHERE name = 'outbox'")
            db.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('outbox', ?)", (high,))
        return salvage.summary(kept) + f"; sequence continues at {next_sequence}"


def _prepare(db: sqlite3.Connection) -> None:
    """Create or upgrade the schema (idempotent)."""
    db.executescript(_SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    for column, kind in (("created_mono_ns", "INTEGER"), ("boot_id", "TEXT")):
        if column not in columns:  # a file written before monotonic ages: rows keep wall-clock age
            db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
    for name in _COUNTERS:
        db.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (name,))


def _plausible(row: dict) -> bool:
    """A salvaged row whose fields have the types the schema writes (damage can garble a row's cells)."""
    payload = row.get("payload")
    return (isinstance(row.get("topic"), str) and bool(row["topic"]) and isinstance(payload, bytes)
            and isinstance(row.get("message_id"), str) and isinstance(row.get("created_wall_ns"), int)
            and (row.get("expiry_s") is None or isinstance(row["expiry_s"], (int, float)))
            and _sequence_of(payload) is not False)


def _sequence_of(payload: bytes) -> int | None | bool:
    """A score payload's ``sequence``; None for a payload that is not a score; False for a score whose JSON
    does not parse (a garbled row: not delivered)."""
    if not payload.startswith(b"{"):
        return None
    try:
        value = json.loads(payload).get("sequence")
    except (ValueError, AttributeError):
        return False
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one fsync'd unit under synchronous=FULL."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:  # the original error is the one to report (and may heal the file)
            pass
