"""Which patient is in which bed, on the central station: ``PatientRegistry``, a small SQLite file.

Why intervals, not a "current patient" column: a score is about the infant who lay in the bed *while its
window was recorded*, and scores arrive late (an outbox replay after a network cut, a bridge restart). A
transfer (ADT A02) at 10:00 must not re-label the 09:59 score that reaches the bridge at 10:01. So every
assignment is a *stay* ``[start, end)`` of one patient in one bed, and the bridge asks for the patient whose
stay covers the score's whole window (:meth:`PatientRegistry.patient_for_window`); a window that straddles an
admission, transfer or discharge belongs to no patient and goes out location-only. Never guess a patient.

Bed id: ``"<site>/<bed>"``, the two topic levels of the device (``neopain/<site>/<bed>/...``), made by
:func:`bed_id`. The ADT listener (``appliance.station.adt``) maps HL7 PV1-3 to it (point of care = site,
bed = bed) -- the same mapping ``hl7.build_oru_r01`` writes into the ORU's PV1-3.

Several processes may open one file (``neopain adt`` writing, ``neopain bridge`` and the web station
reading): WAL mode and a busy timeout make that safe; within a process one connection is shared under a lock.
Times are stored as integer microseconds since the epoch (UTC), which compare exactly.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterator

from appliance.mqtt import topics
from appliance.storage import connect

log = logging.getLogger(__name__)

#: HL7 table 0001 (administrative sex), the codes FHIR's AdministrativeGender maps from.
SEXES = ("F", "M", "O", "U", "A", "N")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    authority TEXT NOT NULL, mrn TEXT NOT NULL, family TEXT NOT NULL, given TEXT NOT NULL,
    birth_date TEXT, sex TEXT, authority_id TEXT, authority_id_type TEXT, updated_us INTEGER NOT NULL,
    PRIMARY KEY (authority, mrn));
CREATE TABLE IF NOT EXISTS stays (
    id INTEGER PRIMARY KEY, authority TEXT NOT NULL, mrn TEXT NOT NULL, bed_id TEXT NOT NULL,
    start_us INTEGER NOT NULL, end_us INTEGER, source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS stays_bed ON stays (bed_id, start_us);
CREATE INDEX IF NOT EXISTS stays_patient ON stays (authority, mrn, end_us);
CREATE TABLE IF NOT EXISTS adt_messages (control_id TEXT PRIMARY KEY, received_us INTEGER NOT NULL);
"""


def bed_id(site: str, bed: str) -> str:
    """``"<site>/<bed>"``: the registry's bed id for the device publishing under ``neopain/<site>/<bed>``."""
    return f"{topics.check_level('site', site)}/{topics.check_level('bed', bed)}"


def _check_bed_id(value: str) -> str:
    site, sep, bed = value.partition("/")
    if not sep:
        raise ValueError(f"bed id: expected '<site>/<bed>', got {value!r}")
    return bed_id(site, bed)


@dataclass(frozen=True)
class Patient:
    """A patient as the hospital identifies it: MRN within its assigning authority (HL7 CX), name (XPN).

    ``authority`` is the assigning authority's namespace id (CX.4.1, e.g. ``"HOSP"``); ``authority_id`` and
    ``authority_id_type`` its universal id when the ADT feed gives one (CX.4.2/.3, e.g. an OID and ``ISO``),
    which FHIR turns into the identifier's system.
    """

    mrn: str
    authority: str
    family: str
    given: str
    birth_date: date | None = None
    sex: str | None = None
    authority_id: str | None = None
    authority_id_type: str | None = None

    def __post_init__(self) -> None:
        for name in ("mrn", "authority", "family"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"patient.{name}: must be a non-empty string, got {value!r}")
        if self.sex is not None and self.sex not in SEXES:
            raise ValueError(f"patient.sex: expected one of {', '.join(SEXES)} (HL7 table 0001), got {self.sex!r}")

    @property
    def key(self) -> tuple[str, str]:
        return (self.authority, self.mrn)

    def display(self) -> str:
        """``"FAMILY, Given"`` (the way wards print a name band)."""
        return f"{self.family}, {self.given}" if self.given else self.family


@dataclass(frozen=True)
class Stay:
    """One patient in one bed from ``start`` until ``end`` (None: still there)."""

    patient: Patient
    bed_id: str
    start: datetime
    end: datetime | None
    source: str  # "adt A01", "web", ...


def _us(t: datetime) -> int:
    if t.tzinfo is None:
        raise ValueError(f"time {t.isoformat()}: no time zone (local or UTC cannot be guessed)")
    delta = t.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class PatientRegistry:
    """Bed -> patient assignments over time, kept in SQLite at ``path`` (created when missing).

    ``admit`` / ``transfer`` / ``discharge`` take the time the event happened (the ADT's EVN-6 or EVN-2, not
    the time the message arrived) and return a one-line description for the journal and the ADT ACK.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect(self.path)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---------------------------------------------------------------------------------- queries
    def patient_for_bed(self, bed: str, at: datetime | None = None) -> Patient | None:
        """The patient in ``bed`` (``"<site>/<bed>"``) at ``at`` (default: now), or None."""
        t = _us(at or _now())
        with self._lock:
            row = self._db.execute(
                "SELECT authority, mrn FROM stays WHERE bed_id=? AND start_us<=? AND (end_us IS NULL OR end_us>?)"
                " ORDER BY start_us DESC LIMIT 1", (_check_bed_id(bed), t, t)).fetchone()
            return None if row is None else self._patient(row[0], row[1])

    def patient_for_window(self, bed: str, start: datetime, end: datetime) -> Patient | None:
        """The patient whose stay in ``bed`` covers the whole window ``[start, end]``, else None.

        A window that straddles an admission, transfer or discharge mixes two infants (or an infant and an
        empty cot): it is assigned to nobody rather than to a guess."""
        s, e = _us(start), _us(end)
        with self._lock:
            row = self._db.execute(
                "SELECT authority, mrn FROM stays WHERE bed_id=? AND start_us<=? AND (end_us IS NULL OR end_us>=?)"
                " ORDER BY start_us DESC LIMIT 1", (_check_bed_id(bed), s, e)).fetchone()
            return None if row is None else self._patient(row[0], row[1])

    def patient(self, authority: str, mrn: str) -> Patient | None:
        with self._lock:
            return self._patient(authority, mrn)

    def bed_of(self, authority: str, mrn: str) -> str | None:
        """The bed a patient is in now (an open stay), or None."""
        with self._lock:
            row = self._open_stay(authority, mrn)
            return None if row is None else str(row[1])

    def stays(self, bed: str | None = None) -> list[Stay]:
        """Every stay (of one bed when given), oldest first: the history a station page or an audit reads."""
        sql = "SELECT authority, mrn, bed_id, start_us, end_us, source FROM stays"
        args: tuple = ()
        if bed is not None:
            sql, args = sql + " WHERE bed_id=?", (_check_bed_id(bed),)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY start_us, id", args).fetchall()
            out = []
            for a, m, b, s, e, src in rows:
                patient = self._patient(a, m)
                assert patient is not None  # stays are only written with their patient
                out.append(Stay(patient, b, _from_us(s), None if e is None else _from_us(e), src))
            return out

    def assignments(self, at: datetime | None = None) -> dict[str, Patient]:
        """Bed id -> patient for every occupied bed at ``at`` (default now): the board's patient column."""
        t = _us(at or _now())
        with self._lock:
            rows = self._db.execute("SELECT bed_id, authority, mrn FROM stays WHERE start_us<=? AND "
                                    "(end_us IS NULL OR end_us>?) ORDER BY start_us", (t, t)).fetchall()
            out = {}
            for b, a, m in rows:
                patient = self._patient(a, m)
                if patient is not None:
                    out[b] = patient
            return out

    # ---------------------------------------------------------------------------------- changes
    def admit(self, patient: Patient, bed: str, at: datetime | None = None, *, source: str = "manual") -> str:
        """``patient`` is in ``bed`` from ``at`` on. An earlier open stay of the patient ends at ``at``; a
        different patient still open in that bed is displaced (their stay ends at ``at``, logged as a warning:
        the feed missed a discharge or transfer, and the newest event is the best knowledge there is)."""
        bed = _check_bed_id(bed)
        t = _us(at or _now())
        with self._lock, self._transaction():
            self._upsert(patient, t)
            notes = self._close_patient(patient.key, t)
            notes += self._displace(bed, patient.key, t)
            self._db.execute("INSERT INTO stays (authority, mrn, bed_id, start_us, end_us, source) "
                             "VALUES (?, ?, ?, ?, NULL, ?)", (*patient.key, bed, t, source))
        text = f"{patient.authority}/{patient.mrn} in bed {bed} from {_from_us(t).isoformat()}"
        return "; ".join([text, *notes])

    def transfer(self, patient: Patient, bed: str, at: datetime | None = None, *, source: str = "manual") -> str:
        """``patient`` moves to ``bed`` at ``at``: scores of the old bed up to ``at`` stay theirs, later scores
        of the new bed become theirs. A patient with no open stay is admitted (logged)."""
        bed = _check_bed_id(bed)
        with self._lock:
            row = self._open_stay(*patient.key)
        if row is None:
            log.warning("patients: transfer of %s/%s who is in no bed; admitting to %s", *patient.key, bed)
        return self.admit(patient, bed, at, source=source)

    def discharge(self, authority: str, mrn: str, at: datetime | None = None, *, source: str = "manual") -> str:
        """The patient's open stay ends at ``at``. ``KeyError`` when the patient is in no bed."""
        t = _us(at or _now())
        with self._lock, self._transaction():
            row = self._open_stay(authority, mrn)
            if row is None:
                raise KeyError(f"patient {authority}/{mrn} is in no bed")
            self._end(row[0], row[2], t)
        return f"{authority}/{mrn} left bed {row[1]} at {_from_us(max(t, row[2])).isoformat()}"

    def seen_message(self, control_id: str, at: datetime | None = None) -> bool:
        """Record an ADT message control id (MSH-10); True when it was already applied (a re-sent message
        whose ACK was lost must be acknowledged again, not applied twice)."""
        with self._lock, self._transaction():
            try:
                self._db.execute("INSERT INTO adt_messages (control_id, received_us) VALUES (?, ?)",
                                 (control_id, _us(at or _now())))
                return False
            except sqlite3.IntegrityError:
                return True

    def forget_message(self, control_id: str) -> None:
        """Undo :meth:`seen_message` for a message that could not be applied, so a corrected resend is."""
        with self._lock:
            self._db.execute("DELETE FROM adt_messages WHERE control_id=?", (control_id,))

    # ---------------------------------------------------------------------------------- internals
    def _transaction(self) -> "_Tx":
        return _Tx(self._db)

    def _patient(self, authority: str, mrn: str) -> Patient | None:
        row = self._db.execute("SELECT family, given, birth_date, sex, authority_id, authority_id_type FROM patients"
                               " WHERE authority=? AND mrn=?", (authority, mrn)).fetchone()
        if row is None:
            return None
        family, given, birth, sex, aid, atype = row
        return Patient(mrn=mrn, authority=authority, family=family, given=given,
                       birth_date=date.fromisoformat(birth) if birth else None, sex=sex,
                       authority_id=aid, authority_id_type=atype)

    def _upsert(self, p: Patient, t: int) -> None:
        self._db.execute(
            "INSERT INTO patients (authority, mrn, family, given, birth_date, sex, authority_id, authority_id_type,"
            " updated_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (authority, mrn) DO UPDATE SET"
            " family=excluded.family, given=excluded.given, birth_date=excluded.birth_date, sex=excluded.sex,"
            " authority_id=excluded.authority_id, authority_id_type=excluded.authority_id_type,"
            " updated_us=excluded.updated_us",
            (p.authority, p.mrn, p.family, p.given, p.birth_date.isoformat() if p.birth_date else None, p.sex,
             p.authority_id, p.authority_id_type, t))

    def _open_stay(self, authority: str, mrn: str) -> tuple[int, str, int] | None:
        return self._db.execute("SELECT id, bed_id, start_us FROM stays WHERE authority=? AND mrn=? AND end_us IS "
                                "NULL ORDER BY start_us DESC LIMIT 1", (authority, mrn)).fetchone()

    def _end(self, stay: int, start_us: int, t: int) -> None:
        # An event dated before the stay began (a late, out-of-order message) ends it where it began: empty.
        self._db.execute("UPDATE stays SET end_us=? WHERE id=?", (max(t, start_us), stay))

    def _close_patient(self, key: tuple[str, str], t: int) -> list[str]:
        notes = []
        for stay, bed, start in self._db.execute("SELECT id, bed_id, start_us FROM stays WHERE authority=? AND "
                                                 "mrn=? AND end_us IS NULL", key).fetchall():
            self._end(stay, start, t)
            notes.append(f"left bed {bed}")
        return notes

    def _displace(self, bed: str, key: tuple[str, str], t: int) -> list[str]:
        notes = []
        for stay, a, m, start in self._db.execute("SELECT id, authority, mrn, start_us FROM stays WHERE bed_id=? "
                                                  "AND end_us IS NULL", (bed,)).fetchall():
            if (a, m) == key:
                continue
            self._end(stay, start, t)
            log.warning("patients: bed %s still held %s/%s (no discharge or transfer seen); their stay ends at %s",
                        bed, a, m, _from_us(t).isoformat())
            notes.append(f"displaced {a}/{m}")
        return notes


class _Tx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def iter_beds(assignments: dict[str, Patient]) -> Iterator[tuple[str, str, Patient]]:
    """``(site, bed, patient)`` for a :meth:`PatientRegistry.assignments` result (the board keys beds so)."""
    for key, patient in assignments.items():
        site, _, bed = key.partition("/")
        yield site, bed, patient
