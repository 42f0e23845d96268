"""Calibration sessions on the device (what the daemon records at run time; `neopain calibrate start|stop|rate`
in calibration/sessions.py are the engineer's commands over the same store): raw model scores and nurses' NIPS ratings, matched by time (SQLite).

Why on the device and why SQLite: pairs contain pseudonymous infant ids and the nurses' ratings; they stay on
the appliance's own disk (like the outbox) and survive restarts and power loss (WAL, one transaction per
write). Scores are only recorded while a session is open (an engineer started it for one infant), so the
device does not accumulate score history outside calibration.

Matching: a rating at wall-clock time ``t`` is paired with the session's score whose window end is nearest to
``t`` within ``max_gap_s`` (default 15 s, a few scoring cycles); the pair keeps that score's message id so a
fit can be traced back to published messages. Ratings with no score close enough are reported unmatched,
never paired with a far-away score.

Inputs: ``neopain calibrate start|stop|rate`` on the device, or MQTT ``<prefix>/cmd/calibration/start``
(``{"infant": "I07"}``), ``cmd/calibration/stop`` (``{}``) and ``cmd/calibration/rate``
(``{"nips": 3, "rater": "RN12", "at": "2024-05-01T10:00:00Z"}``, ``at`` optional) through
:class:`CalibrationRecorder`, which hands every write to its own thread so neither paho's network thread nor
the scoring loop ever waits on the disk.
"""
from __future__ import annotations

import logging
import math
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from appliance.isotime import parse_iso8601
from appliance.storage import Healed, Salvage, StateFile, health_note, restore_tables

log = logging.getLogger(__name__)

DEFAULT_DB = Path("/var/lib/neopain/calibration/sessions.sqlite")
MAX_GAP_S = 15.0
COMMANDS = ("calibration/start", "calibration/stop", "calibration/rate")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id INTEGER PRIMARY KEY, infant TEXT NOT NULL, started REAL NOT NULL,
                                     stopped REAL, started_by TEXT);
CREATE TABLE IF NOT EXISTS scores (message_id TEXT PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id),
                                   t REAL NOT NULL, raw REAL NOT NULL, published REAL, calibration_version TEXT,
                                   model_version TEXT);
CREATE INDEX IF NOT EXISTS scores_t ON scores (session_id, t);
CREATE TABLE IF NOT EXISTS ratings (id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id),
                                    nips INTEGER NOT NULL, rater TEXT NOT NULL, t REAL NOT NULL,
                                    entered REAL NOT NULL, source TEXT);
"""


@dataclass(frozen=True)
class Pair:
    """One matched calibration pair: the model's raw NIPS and a nurse's NIPS for the same moment."""

    raw: float
    nips: float
    rater: str
    infant: str
    t: float = 0.0  # seconds (UTC epoch); for traceability, not used by the fit
    message_id: str | None = None


class SessionError(ValueError):
    """A request the store cannot honour (no open session, bad rating); the message says what to do."""


def parse_time(value: Any, *, name: str = "at") -> float:
    """UTC epoch seconds from ISO 8601 (``Z`` or an offset; naive means UTC) or a number of epoch seconds."""
    if isinstance(value, bool):
        raise SessionError(f"{name}: expected an ISO 8601 time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise SessionError(f"{name}: must be finite")
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            dt = parse_iso8601(value)
        except ValueError:
            raise SessionError(f"{name}: {value!r} is not ISO 8601 (e.g. 2024-05-01T10:00:00Z)") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    raise SessionError(f"{name}: expected an ISO 8601 time or epoch seconds, got {type(value).__name__}")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise SessionError(f"{name}: expected a non-empty id of at most 64 characters, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class Session:
    id: int
    infant: str
    started: float
    stopped: float | None


_SALVAGE_TABLES = {
    "sessions": ("id", "infant", "started", "stopped", "started_by"),
    "scores": ("message_id", "session_id", "t", "raw", "published", "calibration_version", "model_version"),
    "ratings": ("id", "session_id", "nips", "rater", "t", "entered", "source"),
}


def _restore(db: sqlite3.Connection, salvage: Salvage) -> str:
    """Salvaged sessions, scores and ratings into a fresh file (same ids, so pairs still match)."""
    return restore_tables(db, salvage, _SALVAGE_TABLES)


class SessionStore:
    """The sessions database. Thread-safe (one connection, one lock); each write is one transaction.

    ``heal``: a damaged file is moved aside and salvaged (``appliance/storage.py``); only the daemon, which
    owns the state directory, sets it. Engineer's tools open the file beside the running daemon without it,
    and a damaged file is then an error naming the file.
    """

    def __init__(self, path: str | Path, *, heal: bool = False) -> None:
        self.path = Path(path)
        self._file = StateFile(self.path, what="calibration sessions", prepare=lambda db: db.executescript(_SCHEMA),
                               tables=_SALVAGE_TABLES, restore=_restore, heal=heal, timeout=5.0)

    @property
    def healed(self) -> list[Healed]:
        """Damaged files this store moved aside and salvaged (for health and the journal)."""
        return list(self._file.healed)

    def close(self) -> None:
        self._file.close()

    def _read(self, operation: Callable[[sqlite3.Connection], Any]) -> Any:
        return self._file.run(operation)

    def _write(self, sql: str, params: tuple) -> int:
        return int(self._file.run(lambda db: db.execute(sql, params).lastrowid or 0))

    # ------------------------------------------------------------------------------------ sessions
    def active(self) -> Session | None:
        row = self._read(lambda db: db.execute("SELECT id, infant, started, stopped FROM sessions WHERE stopped IS "
                                               "NULL ORDER BY id DESC LIMIT 1").fetchone())
        return Session(*row) if row else None

    def start(self, infant: str, *, at: float | None = None, started_by: str | None = None) -> Session:
        """Open a session for one infant; an open session (another infant) is closed first."""
        infant = _text("infant", infant)
        t = time.time() if at is None else float(at)
        if (s := self.active()) is not None:
            self.stop(at=t)
            log.info("calibration: session %d (%s) closed by the start of a new one", s.id, s.infant)
        sid = self._write("INSERT INTO sessions (infant, started, started_by) VALUES (?, ?, ?)",
                          (infant, t, started_by))
        return Session(sid, infant, t, None)

    def stop(self, *, at: float | None = None) -> Session:
        s = self.active()
        if s is None:
            raise SessionError("stop: no calibration session is open")
        t = time.time() if at is None else float(at)
        self._write("UPDATE sessions SET stopped = ? WHERE id = ?", (max(t, s.started), s.id))
        return Session(s.id, s.infant, s.started, max(t, s.started))

    def sessions(self) -> list[Session]:
        rows = self._read(lambda db: db.execute("SELECT id, infant, started, stopped FROM sessions ORDER BY id")
                          .fetchall())
        return [Session(*r) for r in rows]

    def _session_at(self, t: float) -> Session | None:
        row = self._read(lambda db: db.execute("SELECT id, infant, started, stopped FROM sessions WHERE started <= ? "
                                               "AND (stopped IS NULL OR stopped >= ?) ORDER BY id DESC LIMIT 1",
                                               (t, t)).fetchone())
        return Session(*row) if row else None

    # ---------------------------------------------------------------------------------- scores/ratings
    def record_score(self, *, message_id: str, t: float, raw: float, published: float | None = None,
                     calibration_version: str | None = None, model_version: str | None = None) -> bool:
        """Store a score if a session is open (True); outside sessions nothing is kept (False)."""
        s = self.active()
        if s is None:
            return False
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or not 0 <= raw <= 7:
            raise SessionError(f"raw: expected a number in [0, 7], got {raw!r}")
        self._write("INSERT OR IGNORE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (message_id, s.id, float(t), float(raw), published, calibration_version, model_version))
        return True

    def rate(self, nips: Any, rater: Any, *, at: Any = None, source: str = "cli") -> int:
        """Add a nurse's NIPS (integer 0-7) at ``at`` (default now) to the session covering that time."""
        if isinstance(nips, float) and nips.is_integer():
            nips = int(nips)
        if isinstance(nips, bool) or not isinstance(nips, int) or not 0 <= nips <= 7:
            raise SessionError(f"nips: expected an integer NIPS total 0-7, got {nips!r}")
        rater = _text("rater", rater)
        t = time.time() if at is None else parse_time(at)
        s = self._session_at(t)
        if s is None:
            when = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            raise SessionError(f"at: no calibration session covers {when}; start one (`neopain calibrate start "
                               f"--infant ID` or cmd/calibration/start) first")
        return self._write("INSERT INTO ratings (session_id, nips, rater, t, entered, source) VALUES (?, ?, ?, ?, ?, ?)",
                           (s.id, nips, rater, t, time.time(), source))

    def counts(self) -> dict[str, int]:
        return self._read(lambda db: {name: int(db.execute(f"SELECT COUNT(*) FROM {name}").fetchone()[0])
                                      for name in ("sessions", "scores", "ratings")})

    def matched_pairs(self, *, max_gap_s: float = MAX_GAP_S) -> list[Pair]:
        """Each rating with the nearest score of its session within ``max_gap_s`` (unmatched ones are left out)."""
        def read(db: sqlite3.Connection) -> list[Pair]:
            ratings = db.execute("SELECT r.session_id, r.nips, r.rater, r.t, s.infant FROM ratings r JOIN "
                                 "sessions s ON s.id = r.session_id ORDER BY r.t, r.id").fetchall()
            out = []
            for session_id, nips, rater, t, infant in ratings:
                match = db.execute(
                    "SELECT message_id, raw FROM scores WHERE session_id = ? AND t BETWEEN ? AND ? "
                    "ORDER BY ABS(t - ?), t LIMIT 1", (session_id, t - max_gap_s, t + max_gap_s, t)).fetchone()
                if match is not None:
                    out.append(Pair(float(match[1]), float(nips), rater, infant, float(t), match[0]))
            return out

        return self._read(read)

    def unmatched_ratings(self, *, max_gap_s: float = MAX_GAP_S) -> int:
        return self.counts()["ratings"] - len(self.matched_pairs(max_gap_s=max_gap_s))


# ---------------------------------------------------------------------------------------- daemon hook
class CalibrationRecorder:
    """Connects the daemon to a :class:`SessionStore`: MQTT commands and scored cycles go through a queue to
    one writer thread.

    Hook-up in ``appliance.daemon``: ``Publisher(..., on_command=recorder.on_command)`` and
    ``ScoringPipeline(..., on_cycle=recorder.on_cycle)``; ``recorder.start()`` before, ``recorder.stop()`` at
    shutdown. The raw score comes from ``CycleResult.raw_nips`` when the pipeline provides it; otherwise a
    score published ``uncalibrated`` *is* the raw score, and a calibrated one without a raw value is skipped
    (counted in ``skipped_no_raw``) because the published value is not what the map must be fitted on.

    ``store`` None with ``unavailable`` (why, naming the file): the store could not be opened; scoring goes
    on, commands are answered with that reason, and :meth:`storage_problems` puts it in health.
    """

    def __init__(self, store: SessionStore | None, *, on_error: Callable[[str], None] | None = None,
                 unavailable: str | None = None) -> None:
        if store is None and not unavailable:
            raise ValueError("CalibrationRecorder: a recorder without a store needs the reason (unavailable=)")
        self.store = store
        self.unavailable = unavailable
        self.storage_error: str | None = None  # the last database error, until a write succeeds again
        self._queue: "queue.Queue[tuple[str, Any] | None]" = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self.on_error = on_error
        self.handled = 0
        self.errors: list[str] = []
        self.scores_recorded = 0
        self.skipped_no_raw = 0

    def start(self) -> "CalibrationRecorder":
        self._thread = threading.Thread(target=self._run, name="calibration-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(("flush", done))
        return done.wait(timeout_s)

    # runs on paho's / the scoring thread: hand over only
    def on_command(self, command: Any) -> None:
        if getattr(command, "name", None) in COMMANDS:
            self._put(("command", command))

    def on_cycle(self, result: Any) -> None:
        if self.store is None:
            return  # no session can be open: nothing to record
        if getattr(result, "kind", None) == "score" and result.message is not None:
            self._put(("score", result))

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._error("calibration recorder queue full: item dropped")

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, obj = item
            try:
                if kind == "flush":
                    obj.set()
                elif kind == "command":
                    self.handle(obj)
                else:
                    self.record(obj)
                if kind != "flush":
                    self.storage_error = None
            except sqlite3.Error as exc:  # names the file (SessionStore's errors do)
                self.storage_error = str(exc)[:300]
                self._error(f"{kind}: {exc}")
            except (SessionError, ValueError) as exc:
                self._error(f"{kind}: {exc}")
            except Exception as exc:  # the writer must outlive any one bad item
                log.exception("calibration recorder failed")
                self._error(f"{kind}: {type(exc).__name__}: {exc}")

    def _error(self, text: str) -> None:
        self.errors.append(text)
        del self.errors[:-20]
        log.warning("calibration: %s", text)
        if self.on_error is not None:
            self.on_error(text)

    def storage_problems(self) -> list[str]:
        """What health must say about the sessions file: moved aside and salvaged, unavailable, or failing."""
        note = health_note(self.store.healed) if self.store is not None else None
        notes = [note] if note else []
        if self.unavailable:
            notes.append(self.unavailable)
        if self.storage_error:
            notes.append(f"calibration sessions failing: {self.storage_error}")
        return notes

    # the work (writer thread, or synchronously from tests)
    def handle(self, command: Any) -> None:
        """Apply one ``calibration/*`` command (``messages.Command``: ``name`` and ``args``)."""
        if self.store is None:
            raise SessionError(f"{command.name}: {self.unavailable}")
        args = dict(getattr(command, "args", {}) or {})
        if command.name == "calibration/start":
            unknown = set(args) - {"infant", "by", "at"}
            if unknown:
                raise SessionError(f"calibration/start: unknown key(s) {sorted(unknown)} (known: infant, by, at)")
            if "infant" not in args:
                raise SessionError("calibration/start: missing key 'infant'")
            at = parse_time(args["at"]) if "at" in args else None
            s = self.store.start(args["infant"], at=at, started_by=args.get("by"))
            log.info("calibration: session %d started for infant %s", s.id, s.infant)
        elif command.name == "calibration/stop":
            s = self.store.stop(at=parse_time(args["at"]) if "at" in args else None)
            log.info("calibration: session %d stopped", s.id)
        elif command.name == "calibration/rate":
            unknown = set(args) - {"nips", "rater", "at"}
            if unknown:
                raise SessionError(f"calibration/rate: unknown key(s) {sorted(unknown)} (known: nips, rater, at)")
            for key in ("nips", "rater"):
                if key not in args:
                    raise SessionError(f"calibration/rate: missing key {key!r}")
            self.store.rate(args["nips"], args["rater"], at=args.get("at"), source="mqtt")
        else:
            raise SessionError(f"unknown calibration command {command.name!r}")
        self.handled += 1

    def record(self, result: Any) -> None:
        """Store one scored cycle (``pipeline.CycleResult``) if a session is open."""
        if self.store is None:
            return
        msg = result.message
        raw = getattr(result, "raw_nips", None)
        if raw is None:
            if msg.get("calibration_version") != "uncalibrated":
                self.skipped_no_raw += 1
                return
            raw = msg["nips"]
        if self.store.record_score(message_id=msg["message_id"], t=parse_time(msg["window"]["end_utc"], name="end_utc"),
                                   raw=float(raw), published=msg.get("nips"),
                                   calibration_version=msg.get("calibration_version"),
                                   model_version=msg.get("model_version")):
            self.scores_recorded += 1
