"""Masimo Radical-7 / Rad-8 / Rad-87 "ASCII 1" serial output (9600 8N1, one CRLF line per second).

A line is a date, a time and ``KEY=value`` tokens whose set varies with model and options, e.g.::

    02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% ... ALARM=0000 EXC=000800

Values made only of dashes (``--``, ``---``, ``--.-``) mean "not available". ``EXC`` (exceptions) and
``ALARM`` are hex bit fields, decoded here into flags by name; bits this module does not know become
``exc_unknown_bits`` / ``alarm_unknown_bits`` so a new firmware's bit is visible rather than dropped.
``ALARM`` bits 0x01-0x08 are the limit alarms; 0x10 (an alarm is active), 0x20 (alarms silenced) and 0x40
(low battery) are device states that MD PnP's Radical-5/7 driver (``poxrad_discrete.h``) documents; a
Radical-5 prints the short form ``ALARM=20 EXC=800``. Alarm flags never invalidate a value: the reading is
still the oximeter's, only the device's state is reported with it.

Plausibility limits (neonatal; outside them the whole line is rejected, because a value the device
cannot produce means the line is corrupt, not that the baby is extreme):

- ``BPM`` (pulse rate): 25..300 /min. Masimo's specified range is 25-240; neonatal SVT reaches ~300.
  0 or 400 are rejected.
- ``SPO2``: 10..100 %. Above 100 is impossible; below 10 no oximeter reports a real value.
- ``PI`` (perfusion index): 0..20 %, Masimo's displayed range is 0.02-20.

A value whose sensor flags say it cannot be valid (no/defective/unrecognised sensor, sensor off,
pulse search) is reported as ``None`` with the flag, so "absent" and "untrustworthy" stay distinct.
Masimo reports no ECG heart rate and no beat-to-beat data: ``hr`` is always ``None``.
"""

from __future__ import annotations

import re

from .types import PLAUSIBLE, Rejection, VitalSample, now_ns

SOURCE = "masimo"
MAX_LINE = 512

EXC_BITS: dict[int, str] = {
    0x1: "no_sensor",
    0x2: "defective_sensor",
    0x4: "low_perfusion",
    0x8: "pulse_search",
    0x10: "interference",
    0x20: "sensor_off",
    0x40: "ambient_light",
    0x80: "unrecognized_sensor",
    0x400: "low_signal_iq",
}
EXC_NORMAL_SET_MODE = 0x800  # "normal SET mode": a state, not a fault; no flag
ALARM_BITS: dict[int, str] = {
    0x1: "alarm_spo2_high",
    0x2: "alarm_spo2_low",
    0x4: "alarm_pr_high",
    0x8: "alarm_pr_low",
    0x10: "alarm_active",
    0x20: "alarm_silenced",
    0x40: "low_battery",
}
# Flags after which the oximeter has no valid reading at all.
INVALIDATING = frozenset(
    {"no_sensor", "defective_sensor", "sensor_off", "unrecognized_sensor", "pulse_search"}
)
LIMITS: dict[str, tuple[float, float]] = {
    "BPM": PLAUSIBLE["pulse_rate"],
    "SPO2": PLAUSIBLE["spo2"],
    "PI": PLAUSIBLE["perfusion_index"],
}
_NUMERIC = re.compile(r"^[+-]?\d+(\.\d+)?$", re.ASCII)
_MISSING = re.compile(r"^[+-]?-+(\.-+)?$")
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _tokens(text: str) -> dict[str, str] | Rejection:
    fields: dict[str, str] = {}
    for tok in text.split():
        if "=" not in tok:
            continue  # date, time and free words are not data
        key, _, value = tok.partition("=")
        if not _KEY.match(key):
            return Rejection("malformed_token", f"bad key in {tok!r}")
        if key in fields:
            return Rejection(f"duplicate:{key}", f"{key} appears twice")
        fields[key] = value
    return fields


def _number(key: str, raw: str) -> float | None | Rejection:
    """Parse one numeric value; ``None`` for the dash forms; a Rejection naming the field otherwise."""
    value = raw.rstrip("%")
    if _MISSING.match(value):
        return None
    if not _NUMERIC.match(value):
        return Rejection(f"unparseable:{key}", f"{key}={raw!r}")
    number = float(value)
    lo, hi = LIMITS[key]
    if not (lo <= number <= hi):
        return Rejection(f"implausible:{key}", f"{key}={number:g} outside [{lo:g}, {hi:g}]")
    return number


def _bits(key: str, raw: str | None, table: dict[int, str], known: int) -> frozenset[str] | Rejection:
    if raw is None or _MISSING.match(raw):
        return frozenset()
    try:
        word = int(raw, 16)
    except ValueError:
        return Rejection(f"bad_hex:{key}", f"{key}={raw!r}")
    flags = {name for bit, name in table.items() if word & bit}
    if word & ~(known | sum(table)):
        flags.add(f"{key.lower()}_unknown_bits")
    return frozenset(flags)


def parse_line(line: bytes | str, t_mono_ns: int | None = None) -> VitalSample | Rejection:
    """Parse one ASCII 1 line. Never raises: anything unusable becomes a Rejection with a reason."""
    t = now_ns() if t_mono_ns is None else t_mono_ns
    try:
        return _parse(line, t)
    except Exception as exc:  # a parser bug must not take the reader down; count it instead
        return Rejection("parser_error", repr(exc))


def _parse(line: bytes | str, t: int) -> VitalSample | Rejection:
    if isinstance(line, (bytes, bytearray)):
        if len(line) > MAX_LINE:
            return Rejection("line_too_long", f"{len(line)} bytes")
        try:
            text = bytes(line).decode("ascii")
        except UnicodeDecodeError as exc:
            return Rejection("not_ascii", f"byte 0x{line[exc.start]:02X} at {exc.start}")
    else:
        text = line
        if len(text) > MAX_LINE:
            return Rejection("line_too_long", f"{len(text)} chars")
    text = text.strip()
    if not text:
        return Rejection("empty", "")
    if any(not (c.isprintable() or c == "\t") for c in text):
        return Rejection("control_char", repr(text[:40]))
    fields = _tokens(text)
    if isinstance(fields, Rejection):
        return fields
    if "SPO2" not in fields and "BPM" not in fields:
        return Rejection("missing_fields", "neither SPO2 nor BPM present")
    values: dict[str, float | None] = {}
    for key in LIMITS:
        raw = fields.get(key)
        parsed = None if raw is None else _number(key, raw)
        if isinstance(parsed, Rejection):
            return parsed
        values[key] = parsed
    exc_flags = _bits("EXC", fields.get("EXC"), EXC_BITS, EXC_NORMAL_SET_MODE)
    if isinstance(exc_flags, Rejection):
        return exc_flags
    alarm_flags = _bits("ALARM", fields.get("ALARM"), ALARM_BITS, 0)
    if isinstance(alarm_flags, Rejection):
        return alarm_flags
    flags = exc_flags | alarm_flags
    if flags & INVALIDATING:
        values = dict.fromkeys(values)
    return VitalSample(
        t_mono_ns=t,
        hr=None,
        spo2=values["SPO2"],
        pulse_rate=values["BPM"],
        perfusion_index=values["PI"],
        flags=flags,
        source=SOURCE,
    )


def format_line(
    spo2: float | None,
    bpm: float | None,
    pi: float | None,
    exc: int = EXC_NORMAL_SET_MODE,
    alarm: int = 0,
    stamp: str = "01/01/24 00:00:00",
    serial_number: str = "0000056661",
) -> bytes:
    """Write a line the way a Radical-7 does (used by the emulator and tests); missing -> dashes."""
    s = "---" if spo2 is None else f"{round(spo2):03d}"
    b = "---" if bpm is None else f"{round(bpm):03d}"
    p = "--.--" if pi is None else f"{pi:05.2f}"
    return (
        f"{stamp} SN={serial_number} SPO2={s}% BPM={b} PI={p}% SPCO=--.-% SPMET=--.-% "
        f"DESAT=-- PIDELTA=+-- ALARM={alarm:04X} EXC={exc:06X}\r\n"
    ).encode("ascii")
