"""The device's SQLite state files (the outbox, the calibration sessions): open, check, and heal when damaged.

Why one module: a flash cell that goes bad, a torn write or a file cut short must not turn into a crash loop
(systemd restarting ``neopain run`` into the same "database disk image is malformed") or into a silent loop
of failing cycles. Both state files follow one rule, implemented once here:

- **At open** the file must pass ``PRAGMA integrity_check``. A file that fails it, or that SQLite cannot
  read at all ("file is not a database"), is **moved aside** as ``<name>.corrupt-<UTC stamp>`` -- never
  deleted: it is evidence, and a better tool may recover more from it -- and the rows SQLite can still read
  are **salvaged** into a fresh file at the original path. The journal gets one error line naming both
  files and the reason, and the owner keeps a :class:`Healed` record that the daemon puts in health.
- **At run time** an operation that meets corruption (SQLITE_CORRUPT / SQLITE_NOTADB) heals the same way
  at once, in the same process, and is retried once on the fresh file; a second failure is raised with the
  file named. Other errors (disk full, I/O errors, permissions) are not corruption: moving the file would
  not help, so they are raised as they are, with the file named.

Salvage reads the damaged file read-only, table by table in rowid order. A damaged page makes a read fail
(or, for a page cut off by truncation, return rowids that go backwards); the reader then probes forward
with doubling steps and a binary search to the first readable row after the damage, so one bad page costs
the rows on that page, not every row behind it. ``PRAGMA writable_schema=ON`` lets SQLite read a file that
is shorter than its header says (a truncated file is otherwise refused as a whole).

Only the process that owns the state directory may heal (the daemon holds its instance lock, see
``appliance/instance_lock.py``); tools that open the same file next to it (``neopain calibrate rate``)
open it with ``heal=False`` and get an error naming the file instead.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: SQLite primary result codes that mean "the file's content is damaged" (not: full, locked, I/O, access).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_CORRUPT_WORDS = ("malformed", "not a database", "corrupt")  # Python 3.10 has no sqlite_errorcode
SALVAGE_SUFFIX = ".salvage"
CORRUPT_INFIX = ".corrupt-"
SALVAGE_TIME_LIMIT_S = 60.0  # a salvage of a badly damaged large file stops here and keeps what it read
_MAX_ROWID = 2 ** 62
_BATCH = 256  # rows per read: a damaged page costs at most a re-read of one batch


class CorruptDatabase(sqlite3.DatabaseError):
    """``PRAGMA integrity_check`` found problems (its first lines are the message)."""


def is_corruption(exc: BaseException) -> bool:
    """True when ``exc`` says the file's content is damaged (the cases healing can fix)."""
    if isinstance(exc, CorruptDatabase):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return any(word in str(exc).lower() for word in _CORRUPT_WORDS)


@dataclass(frozen=True)
class Healed:
    """One damaged state file that was moved aside and salvaged (for the journal and for health)."""

    what: str      # "outbox", "calibration sessions"
    path: Path     # the live file (fresh now)
    aside: Path    # where the damaged file went
    reason: str    # why (SQLite's message or the integrity check's first line)
    salvaged: str  # what was kept, e.g. "12 rows salvaged (1 damaged region skipped)"
    utc: str

    def describe(self) -> str:
        """The journal line: both files, the reason and everything about the salvage."""
        return (f"{self.what} {self.path} was damaged ({self.reason}): moved aside to {self.aside.name}; "
                f"{self.salvaged}")

    def brief(self) -> str:
        """For health's ``detail`` (500 characters shared with everything else): the file, where it went, the
        reason and how many rows were kept."""
        kept = self.salvaged.split(";")[0].split(" (")[0]
        suffix = self.aside.name[len(self.path.name):]  # ".corrupt-<stamp>": the folder and name are the path's
        return f"{self.what} {self.path} damaged ({self.reason[:40]}), moved aside as {suffix}; {kept}"


def health_note(healed: Sequence[Healed]) -> str | None:
    """One health note for one state file's heals: the last one, and how often it happened since start."""
    if not healed:
        return None
    note = healed[-1].brief()
    return note + (f" (damaged {len(healed)} times since start)" if len(healed) > 1 else "")


@dataclass
class Salvage:
    """What could be read from a damaged file: per table, rows as dicts in rowid order (``rowid`` included)."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped_regions: int = 0
    unreadable: list[str] = field(default_factory=list)  # tables not readable at all

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def summary(self, kept: int | None = None) -> str:
        n = self.count() if kept is None else kept
        extra = []
        if self.skipped_regions:
            extra.append(f"{self.skipped_regions} damaged region(s) skipped")
        if self.unreadable:
            extra.append(f"unreadable: {', '.join(self.unreadable)}")
        return f"{n} row(s) salvaged" + (f" ({'; '.join(extra)})" if extra else "")


# ---------------------------------------------------------------------------------------------- connections
def connect(path: Path, *, timeout: float = 10.0) -> sqlite3.Connection:
    """A read-write connection in autocommit mode (callers run explicit transactions), WAL, synchronous=FULL."""
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=timeout)
    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        db.close()
        raise sqlite3.OperationalError(f"journal_mode WAL refused (got {mode})")
    db.execute("PRAGMA synchronous=FULL")
    return db


def integrity_problem(db: sqlite3.Connection) -> str | None:
    """None when ``PRAGMA integrity_check`` says ok, else its first lines; raises when it cannot run."""
    rows = [str(r[0]) for r in db.execute("PRAGMA integrity_check(5)").fetchall()]
    if rows == ["ok"]:
        return None
    problems = [r.strip() for r in rows if not r.startswith("*** in database")]
    return ("integrity check: " + "; ".join(problems))[:300]


# ---------------------------------------------------------------------------------------------- salvage
def _open_for_salvage(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    db.execute("PRAGMA writable_schema=ON")  # read a file shorter than its header says (truncation)
    return db


def _probe(db: sqlite3.Connection, sql: str, at: int) -> None:
    """Raise when the first row with rowid >= ``at`` cannot be read (a rowid that goes back is damage too).

    ``>=``, not ``>``: SQLite finds ``rowid > k`` by first visiting the page that would hold ``k``, so the
    first row after a damaged page is only reachable by asking for its own rowid."""
    row = db.execute(sql + " LIMIT 1", (at,)).fetchone()
    if row is not None and not (isinstance(row[0], int) and row[0] >= at):
        raise sqlite3.DatabaseError("database disk image is malformed (rowid out of order)")


def _skip_damage(db: sqlite3.Connection, sql: str, last: int) -> int | None:
    """After damage met past rowid ``last``: the smallest rowid from which reading works again, or None when
    nothing readable follows. Doubling steps, then a binary search back to the edge of the damage."""
    bad, step = last, 1
    good: int | None = None
    while last + step < _MAX_ROWID:
        at = last + step
        try:
            _probe(db, sql, at)
            good = at
            break
        except sqlite3.DatabaseError:
            bad = at
            step *= 2
    if good is None:
        return None
    while good - bad > 1:
        mid = (bad + good) // 2
        try:
            _probe(db, sql, mid)
            good = mid
        except sqlite3.DatabaseError:
            bad = mid
    return good


def _read_table(db: sqlite3.Connection, table: str, columns: Sequence[str], deadline: float,
                salvage: Salvage) -> None:
    present = [str(r[1]) for r in db.execute(f'PRAGMA table_info("{table}")').fetchall()]
    if not present:
        salvage.unreadable.append(table)
        return
    cols = [c for c in columns if c in present]
    selected = ", ".join(f'"{c}"' for c in cols) or "NULL"
    sql = f'SELECT rowid, {selected} FROM "{table}" WHERE rowid >= ? ORDER BY rowid'
    rows: list[dict[str, Any]] = []
    last, at = 0, 1  # the last rowid read; where to read from (SQLite's own rowids start at 1)

    def take(row: tuple) -> None:
        nonlocal last
        if not (isinstance(row[0], int) and row[0] > last and row[0] >= at):
            raise sqlite3.DatabaseError("database disk image is malformed (rowid out of order)")
        last = row[0]
        rows.append({"rowid": row[0], **{c: v for c, v in zip(cols, row[1:])}})

    while time.monotonic() < deadline:
        try:
            batch = db.execute(sql + f" LIMIT {_BATCH}", (at,))
            n = 0
            for row in batch:
                take(row)
                n += 1
            if n < _BATCH:
                break  # read to the end
            at = last + 1
            continue
        except sqlite3.DatabaseError:
            pass
        if last < at:  # nothing read from the resume point: its first row may still be readable alone
            try:
                row = db.execute(sql + " LIMIT 1", (at,)).fetchone()
                if row is not None:
                    take(row)
                    at = last + 1
                    continue
            except sqlite3.DatabaseError:
                pass
            last = at  # move past it: every round makes progress
        salvage.skipped_regions += 1
        resume = _skip_damage(db, sql, last)
        if resume is None:
            break
        at = resume
    salvage.rows[table] = rows


def read_salvage(path: Path, tables: Mapping[str, Sequence[str]],
                 time_limit_s: float = SALVAGE_TIME_LIMIT_S) -> Salvage:
    """Every readable row of ``tables`` (name -> wanted columns; missing columns are left out) in ``path``."""
    salvage = Salvage()
    deadline = time.monotonic() + time_limit_s
    try:
        db = _open_for_salvage(path)
    except sqlite3.Error:
        salvage.unreadable.extend(tables)
        return salvage
    # A corrupt b-tree can make one statement run very long: stop at the deadline, keep what was read.
    db.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    try:
        for table, columns in tables.items():
            try:
                _read_table(db, table, columns, deadline, salvage)
            except sqlite3.Error:
                salvage.unreadable.append(table)
    finally:
        db.close()
    return salvage


def copy_rows(db: sqlite3.Connection, table: str, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str]) -> int:
    """``INSERT OR IGNORE`` salvaged rows (only ``columns`` present in a row); returns how many went in.
    A row the fresh schema refuses (a NOT NULL column that read back NULL) is left out."""
    kept = 0
    for row in rows:
        cols = [c for c in columns if c in row]
        try:
            cur = db.execute(f'INSERT OR IGNORE INTO "{table}" ({", ".join(cols)}) VALUES '
                             f'({", ".join("?" for _ in cols)})', [row[c] for c in cols])
        except (sqlite3.IntegrityError, sqlite3.InterfaceError):
            continue
        kept += max(0, cur.rowcount)
    return kept


def restore_tables(db: sqlite3.Connection, salvage: Salvage, tables: Mapping[str, Sequence[str]]) -> str:
    """The usual ``restore`` of a :class:`StateFile`: every salvaged row of ``tables`` into the fresh file, a
    table's ``id`` column taking the row's old rowid (so rows that refer to each other still match); returns
    the journal text ("12 row(s) salvaged")."""
    kept = 0
    for table, columns in tables.items():
        rows = salvage.rows.get(table, [])
        if "id" in columns:
            for r in rows:
                r["id"] = r["rowid"]
        kept += copy_rows(db, table, rows, columns)
    return salvage.summary(kept)


# ---------------------------------------------------------------------------------------------- moving aside
def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def move_aside(path: Path) -> Path:
    """Rename ``path`` (and its ``-wal``/``-shm``) to ``<name>.corrupt-<UTC stamp>``; never overwrites."""
    base = path.with_name(f"{path.name}{CORRUPT_INFIX}{_stamp()}")
    aside, n = base, 1
    while aside.exists():
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    _fsync_dir(path.parent)
    return aside


# ---------------------------------------------------------------------------------------------- the state file
Restore = Callable[[sqlite3.Connection, Salvage], str]


class StateFile:
    """One SQLite state file with its schema, healed when damaged (see the module docstring).

    ``prepare(db)`` creates or upgrades the schema (idempotent); ``tables`` names the tables and columns
    worth salvaging; ``restore(db, salvage)`` writes salvaged rows into a fresh, prepared file inside one
    transaction and returns the text for the journal ("12 rows salvaged"). :meth:`run` is how every
    operation reaches the connection: under one lock, healing once on corruption when ``heal`` is set.
    """

    def __init__(self, path: Path | str, *, what: str, prepare: Callable[[sqlite3.Connection], None],
                 tables: Mapping[str, Sequence[str]], restore: Restore, heal: bool = True,
                 timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.what = what
        self._prepare = prepare
        self._tables = tables
        self._restore = restore
        self._heal = heal
        self._timeout = timeout
        self.lock = threading.RLock()
        self.healed: list[Healed] = []
        self.db = self._open()

    # -- opening --------------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._finish_interrupted_heal()
        existed = self.path.exists() and self.path.stat().st_size > 0
        db: sqlite3.Connection | None = None
        try:
            db = connect(self.path, timeout=self._timeout)
            if existed:
                problem = integrity_problem(db)
                if problem is not None:
                    raise CorruptDatabase(problem)
            self._prepare(db)
            return db
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            if not is_corruption(exc):
                raise self._named(exc) from exc
            if not self._heal:
                raise self._named(exc, "damaged; `neopain run` moves it aside and salvages it when it opens it "
                                       "next") from exc
            self._heal_file(str(exc))
            db = connect(self.path, timeout=self._timeout)
            self._prepare(db)
            return db

    def _finish_interrupted_heal(self) -> None:
        """A ``.salvage`` file beside no live file is a complete salvage whose last rename was cut off by a
        crash; beside a live file it is a half-written one (the damaged file was not moved yet): dropped."""
        tmp = self.path.with_name(self.path.name + SALVAGE_SUFFIX)
        if not tmp.exists():
            return
        if self.path.exists():
            for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                p.unlink(missing_ok=True)
        elif self._heal:
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)

    # -- healing --------------------------------------------------------------------------------------
    def _heal_file(self, reason: str) -> Healed:
        """Salvage into ``<name>.salvage``, move the damaged file aside, put the salvage in its place."""
        salvage = read_salvage(self.path, self._tables)
        tmp = self.path.with_name(self.path.name + SALVAGE_SUFFIX)
        for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            p.unlink(missing_ok=True)
        fresh = connect(tmp, timeout=self._timeout)
        try:
            self._prepare(fresh)
            fresh.execute("BEGIN IMMEDIATE")
            try:
                kept = self._restore(fresh, salvage)
            except BaseException:
                fresh.execute("ROLLBACK")
                raise
            fresh.execute("COMMIT")
        finally:
            fresh.close()
        aside = move_aside(self.path)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        healed = Healed(self.what, self.path, aside, reason.replace("\n", " ")[:200], kept,
                        datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        self.healed.append(healed)
        log.error("%s", healed.describe())
        return healed

    def heal_now(self, reason: str) -> Healed:
        """Close the live connection, heal the file and reopen it (run-time corruption)."""
        with self.lock:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            healed = self._heal_file(reason)
            self.db = connect(self.path, timeout=self._timeout)
            self._prepare(self.db)
            return healed

    # -- operations -----------------------------------------------------------------------------------
    def run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """``operation(db)`` under the lock. On corruption (and ``heal``): heal, then retry once. Errors
        that reach the caller name the file (same exception class)."""
        with self.lock:
            try:
                return operation(self.db)
            except sqlite3.DatabaseError as exc:
                if not (self._heal and is_corruption(exc)):
                    raise self._named(exc) from exc
                reason = str(exc)
            try:
                self.heal_now(reason)
            except (sqlite3.Error, OSError) as exc:
                log.error("%s %s: damaged and could not be healed: %s", self.what, self.path, exc)
                raise sqlite3.DatabaseError(f"{self.what} {self.path}: damaged ({reason}) and could not be "
                                            f"healed: {exc}") from exc
            try:
                return operation(self.db)
            except sqlite3.DatabaseError as exc:
                raise self._named(exc) from exc

    def _named(self, exc: sqlite3.DatabaseError, note: str = "") -> sqlite3.DatabaseError:
        text = str(exc) + (f" ({note})" if note else "")
        if str(self.path) in text:
            return exc
        try:
            return type(exc)(f"{self.what} {self.path}: {text}")
        except TypeError:  # an exception class with another signature: keep it as it is
            return exc

    def close(self) -> None:
        with self.lock:
            self.db.close()
