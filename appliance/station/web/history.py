"""The station's score history: every score, health/status/calibration change and nurse rating, in SQLite.

Why SQLite through ``appliance.storage.StateFile``: one file, WAL with ``synchronous=FULL`` (a committed batch
survives a power cut), and the project's one rule for damage: a file that fails its integrity check is moved
aside as ``<name>.corrupt-<stamp>`` and what can be read is salvaged into a fresh one, so a bad sector costs
some rows, never the station. Scores are de-duplicated by ``message_id`` (a redelivery after a reconnect or a
station restart is stored once). Rows older than the retention are deleted in bounded chunks.

Times are Unix seconds (UTC): ``t`` is the end of the score's window on the device's clock, ``received`` the
station's clock when it arrived, ``created`` the device's clock when it built the message.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from appliance.storage import Healed, Salvage, StateFile, restore_tables
from models.vocabulary import NIPS_ITEM_MAXIMA

#: Default retention of the history (hours): the longest chart is 24 h; two days leave a night to look back.
DEFAULT_RETENTION_H = 48.0
#: Rows deleted per retention statement, so a large backlog never holds the writer for long.
PRUNE_CHUNK = 5000

ITEM_NAMES: tuple[str, ...] = tuple(NIPS_ITEM_MAXIMA)
_ITEM_COLUMNS = tuple(f"item_{name}" for name in ITEM_NAMES)

SCORE_COLUMNS: tuple[str, ...] = ("message_id", "site", "bed", "device_id", "sequence", "t", "received", "created",
                                  "nips", "intensity", "confidence", *_ITEM_COLUMNS, "modalities", "calibration",
                                  "model")
EVENT_COLUMNS = ("site", "bed", "t", "kind", "value", "detail")
RATING_COLUMNS = ("site", "bed", "t", "nips", "items", "rater", "command_id", "signed")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS scores (
    message_id TEXT NOT NULL UNIQUE, site TEXT NOT NULL, bed TEXT NOT NULL, device_id TEXT, sequence INTEGER,
    t REAL NOT NULL, received REAL NOT NULL, created REAL, nips REAL NOT NULL, intensity REAL NOT NULL,
    confidence REAL, {", ".join(f"{c} REAL" for c in _ITEM_COLUMNS)},
    modalities TEXT NOT NULL, calibration TEXT, model TEXT);
CREATE INDEX IF NOT EXISTS scores_bed_t ON scores (site, bed, t);
CREATE INDEX IF NOT EXISTS scores_t ON scores (t);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, bed TEXT NOT NULL, t REAL NOT NULL,
    kind TEXT NOT NULL, value TEXT NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS events_bed_t ON events (site, bed, t);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY, site TEXT NOT NULL, bed TEXT NOT NULL, t REAL NOT NULL, nips INTEGER NOT NULL,
    items TEXT NOT NULL, rater TEXT NOT NULL, command_id TEXT NOT NULL, signed INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS ratings_bed_t ON ratings (site, bed, t);
"""

_SALVAGE_TABLES = {"scores": SCORE_COLUMNS, "events": ("id", *EVENT_COLUMNS), "ratings": ("id", *RATING_COLUMNS)}


@dataclass(frozen=True)
class ScoreRow:
    """One stored score (what the board, the chart and the confirmation need of it)."""

    message_id: str
    site: str
    bed: str
    device_id: str | None
    sequence: int | None
    t: float
    received: float
    created: float | None
    nips: float
    intensity: float
    confidence: float | None
    items: dict[str, float] | None
    modalities: tuple[str, ...]
    calibration: str | None
    model: str | None

    def values(self) -> tuple[Any, ...]:
        items = [None if self.items is None else self.items.get(n) for n in ITEM_NAMES]
        return (self.message_id, self.site, self.bed, self.device_id, self.sequence, self.t, self.received,
                self.created, self.nips, self.intensity, self.confidence, *items, ",".join(self.modalities),
                self.calibration, self.model)

    @classmethod
    def from_values(cls, row: Sequence[Any]) -> "ScoreRow":
        n = len(ITEM_NAMES)
        items_raw = row[11:11 + n]
        items = None if all(v is None for v in items_raw) else {k: float(v or 0.0) for k, v in zip(ITEM_NAMES, items_raw)}
        mods, cal, model = row[11 + n:14 + n]
        return cls(row[0], row[1], row[2], row[3], row[4], float(row[5]), float(row[6]),
                   None if row[7] is None else float(row[7]), float(row[8]), float(row[9]),
                   None if row[10] is None else float(row[10]), items, tuple(m for m in str(mods).split(",") if m),
                   cal, model)


@dataclass(frozen=True)
class Event:
    """A change on a bed: ``health`` (value: state, detail), ``status`` (online/offline) or ``calibration``."""

    site: str
    bed: str
    t: float
    kind: str
    value: str
    detail: str | None = None


@dataclass(frozen=True)
class Rating:
    """A nurse's rating entered on the station and sent to the device as ``cmd/calibration/rate``."""

    site: str
    bed: str
    t: float
    nips: int
    items: dict[str, int]
    rater: str
    command_id: str
    signed: bool


@dataclass(frozen=True)
class Bucket:
    """The scores of one time slice of a chart: mean, range and mean confidence and items."""

    t0: float
    t1: float
    count: int
    nips: float
    nips_min: float
    nips_max: float
    confidence: float | None
    items: dict[str, float] | None


def _restore(db: sqlite3.Connection, salvage: Salvage) -> str:
    return restore_tables(db, salvage, _SALVAGE_TABLES)


class HistoryStore:
    """The history file. Thread-safe (one connection under ``StateFile``'s lock); each write is one transaction."""

    def __init__(self, path: str | Path, *, retention_s: float = DEFAULT_RETENTION_H * 3600.0) -> None:
        if not retention_s > 0:
            raise ValueError(f"retention: must be > 0 seconds, got {retention_s!r}")
        self.path = Path(path)
        self.retention_s = float(retention_s)
        self._file = StateFile(self.path, what="station history", prepare=lambda db: db.executescript(_SCHEMA),
                               tables=_SALVAGE_TABLES, restore=_restore, heal=True, timeout=10.0)

    @property
    def healed(self) -> list[Healed]:
        """Damaged files moved aside and salvaged since start (shown on the board)."""
        return list(self._file.healed)

    def close(self) -> None:
        self._file.close()

    # ------------------------------------------------------------------------------------------- writes
    def write(self, scores: Iterable[ScoreRow] = (), events: Iterable[Event] = ()) -> list[ScoreRow]:
        """Store a batch in one transaction; returns the scores that were new (not already stored)."""
        scores, events = list(scores), list(events)
        placeholders = ", ".join("?" for _ in SCORE_COLUMNS)

        def run(db: sqlite3.Connection) -> list[ScoreRow]:
            new: list[ScoreRow] = []
            db.execute("BEGIN IMMEDIATE")
            try:
                for s in scores:
                    cur = db.execute(f"INSERT OR IGNORE INTO scores ({', '.join(SCORE_COLUMNS)}) VALUES ({placeholders})",
                                     s.values())
                    if cur.rowcount > 0:
                        new.append(s)
                db.executemany(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
                               [(e.site, e.bed, e.t, e.kind, e.value, e.detail) for e in events])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return new

        return self._file.run(run)

    def add_rating(self, rating: Rating) -> int:
        def run(db: sqlite3.Connection) -> int:
            cur = db.execute(f"INSERT INTO ratings ({', '.join(RATING_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (rating.site, rating.bed, rating.t, rating.nips, json.dumps(rating.items, sort_keys=True),
                              rating.rater, rating.command_id, int(rating.signed)))
            return int(cur.lastrowid or 0)

        return self._file.run(run)

    def prune(self, now: float | None = None) -> int:
        """Delete rows older than the retention, one chunk per table; returns how many went (call until 0)."""
        cutoff = (time.time() if now is None else now) - self.retention_s

        def run(db: sqlite3.Connection) -> int:
            gone = 0
            for table in ("scores", "events", "ratings"):
                cur = db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE t < ? "
                                 f"LIMIT {PRUNE_CHUNK})", (cutoff,))
                gone += max(0, cur.rowcount)
            return gone

        return self._file.run(run)

    # -------------------------------------------------------------------------------------------- reads
    def latest_scores(self) -> list[ScoreRow]:
        """The newest score (by window end) of every bed: what the board shows after a restart."""
        sql = (f"SELECT {', '.join('s.' + c for c in SCORE_COLUMNS)} FROM scores s JOIN "
               f"(SELECT site, bed, MAX(t) AS mt FROM scores GROUP BY site, bed) m "
               f"ON s.site = m.site AND s.bed = m.bed AND s.t = m.mt")
        rows = self._file.run(lambda db: db.execute(sql).fetchall())
        newest: dict[tuple[str, str], ScoreRow] = {}
        for r in rows:
            row = ScoreRow.from_values(r)
            newest.setdefault((row.site, row.bed), row)
        return list(newest.values())

    def scores(self, site: str, bed: str, since: float, until: float) -> list[ScoreRow]:
        sql = (f"SELECT {', '.join(SCORE_COLUMNS)} FROM scores WHERE site = ? AND bed = ? AND t >= ? AND t <= ? "
               f"ORDER BY t")
        rows = self._file.run(lambda db: db.execute(sql, (site, bed, since, until)).fetchall())
        return [ScoreRow.from_values(r) for r in rows]

    def buckets(self, site: str, bed: str, since: float, until: float, count: int) -> list[Bucket]:
        """The scores in [since, until] in ``count`` equal time slices (empty slices left out), for a chart."""
        width = (until - since) / count
        items_sql = ", ".join(f"AVG({c})" for c in _ITEM_COLUMNS)
        sql = (f"SELECT CAST((t - ?) / ? AS INTEGER) AS b, COUNT(*), AVG(nips), MIN(nips), MAX(nips), "
               f"AVG(confidence), {items_sql}, COUNT(item_{ITEM_NAMES[0]}) FROM scores "
               f"WHERE site = ? AND bed = ? AND t >= ? AND t <= ? GROUP BY b ORDER BY b")
        rows = self._file.run(lambda db: db.execute(sql, (since, width, site, bed, since, until)).fetchall())
        out = []
        n = len(ITEM_NAMES)
        for r in rows:
            b = min(int(r[0]), count - 1)
            items = None if not r[6 + n] else {k: float(v) for k, v in zip(ITEM_NAMES, r[6:6 + n])}
            out.append(Bucket(since + b * width, since + (b + 1) * width, int(r[1]), float(r[2]), float(r[3]),
                              float(r[4]), None if r[5] is None else float(r[5]), items))
        return out

    def events(self, site: str, bed: str, since: float, until: float) -> list[Event]:
        """Events in [since, until], plus the last one of each kind before ``since`` (the state at the left
        edge of a chart)."""
        def run(db: sqlite3.Connection) -> list[Any]:
            before = db.execute(
                "SELECT site, bed, t, kind, value, detail FROM events e WHERE site = ? AND bed = ? AND t < ? AND "
                "id = (SELECT id FROM events WHERE site = e.site AND bed = e.bed AND kind = e.kind AND t < ? "
                "ORDER BY t DESC, id DESC LIMIT 1)", (site, bed, since, since)).fetchall()
            inside = db.execute("SELECT site, bed, t, kind, value, detail FROM events WHERE site = ? AND bed = ? "
                                "AND t >= ? AND t <= ? ORDER BY t, id", (site, bed, since, until)).fetchall()
            return [*sorted(before, key=lambda r: r[2]), *inside]

        return [Event(*r) for r in self._file.run(run)]

    def last_events(self) -> list[Event]:
        """The newest event of each kind of every bed (what the board knew before a restart)."""
        sql = ("SELECT site, bed, t, kind, value, detail FROM events WHERE id IN "
               "(SELECT MAX(id) FROM events GROUP BY site, bed, kind)")
        return [Event(*r) for r in self._file.run(lambda db: db.execute(sql).fetchall())]

    def ratings(self, site: str, bed: str, since: float, until: float) -> list[Rating]:
        sql = ("SELECT site, bed, t, nips, items, rater, command_id, signed FROM ratings WHERE site = ? AND bed = ? "
               "AND t >= ? AND t <= ? ORDER BY t, id")
        rows = self._file.run(lambda db: db.execute(sql, (site, bed, since, until)).fetchall())
        return [Rating(r[0], r[1], float(r[2]), int(r[3]), json.loads(r[4]), r[5], r[6], bool(r[7])) for r in rows]

    def count(self, table: str = "scores") -> int:
        if table not in _SALVAGE_TABLES:
            raise ValueError(f"table: {table!r} is not one of {', '.join(_SALVAGE_TABLES)}")
        return int(self._file.run(lambda db: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]))
