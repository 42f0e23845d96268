"""ISO 8601 / RFC 3339 times parsed the same way on Python 3.10 and 3.11+.

Why: the device runs on JetPack 6's Python 3.10 (image/README.md), whose ``datetime.fromisoformat`` only
reads what ``isoformat()`` writes: no ``Z``, exactly 3 or 6 fraction digits, ``+HH:MM`` offsets. 3.11 reads
what other producers send too: ``Z``, ``.12`` or ``.123456789`` (Go's RFC3339Nano, Java's ``Instant``, FHIR
instants), ``,`` as the decimal sign, ``+0000`` and ``+01`` offsets. A station command or a FHIR instant that
parses on the development machine must not be refused as "not ISO 8601" on the device, so every parse goes
through :func:`parse_iso8601`, which rewrites those forms into the one 3.10 reads (a no-op for 3.11's
result). The basic format without separators (``20261125T172543``) stays 3.11-only; nothing we talk to
sends it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

# hh:mm:ss followed by a decimal fraction of any length ('.' or ',').
_FRACTION = re.compile(r"(\d{2}:\d{2}:\d{2})[.,](\d+)")
# A UTC offset after a time (hh:mm or hh:mm:ss[.f]) as +HHMM or +HH; the colon anchors it to the time so that
# the day of a date-only "2026-11-25" is never read as an offset.
_OFFSET = re.compile(r"(:\d{2}(?:\.\d+)?)([+-])(\d{2})(\d{2})?$")


def normalise_iso8601(text: str) -> str:
    """``text`` rewritten into the extended form Python 3.10's ``fromisoformat`` reads (see module doc)."""
    text = text.replace("Z", "+00:00")
    # Python 3.11 truncates a fraction to microseconds (it does not round); so does this.
    text = _FRACTION.sub(lambda m: f"{m[1]}.{m[2][:6].ljust(6, '0')}", text, count=1)
    return _OFFSET.sub(lambda m: f"{m[1]}{m[2]}{m[3]}:{m[4] or '00'}", text, count=1)


def parse_iso8601(text: str) -> datetime:
    """``datetime.fromisoformat`` with 3.11's extended-format leniency on every Python (ValueError if bad).

    Naive in, naive out: whether a missing offset means UTC is the caller's decision."""
    return datetime.fromisoformat(normalise_iso8601(text))


def parse_utc(text: str, name: str) -> datetime:
    """An ISO 8601 time that carries its zone, converted to UTC; ``ValueError`` naming ``name`` otherwise.

    For the places where a zoneless time is an error rather than a convention (a score's window end, an HL7
    timestamp): local or UTC cannot be guessed there."""
    try:
        t = parse_iso8601(text)
    except ValueError as exc:
        raise ValueError(f"{name}: not ISO 8601: {text!r}") from exc
    if t.tzinfo is None:
        raise ValueError(f"{name}: no time zone in {text!r}")
    return t.astimezone(timezone.utc)
