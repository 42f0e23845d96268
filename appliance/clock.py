"""The one clock of the appliance.

Every sample (frame, audio period, vitals line, RR interval) is stamped exactly once, at arrival, with
``time.monotonic_ns()``. Monotonic time never jumps when NTP or an operator changes the wall clock, so
windows, ages and stale flags stay correct across clock steps. Wall-clock UTC is attached only when a message
leaves the device (publish time), by mapping the monotonic stamp through "now" on both clocks.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

NS_PER_S = 1_000_000_000


def now_ns() -> int:
    """Monotonic time in integer nanoseconds; the stamp every source uses at arrival."""
    return time.monotonic_ns()


def seconds(ns: int) -> float:
    """Convert a nanosecond duration into float seconds (for ages and health reports)."""
    return ns / NS_PER_S


def to_ns(s: float) -> int:
    """Convert float seconds into integer nanoseconds (for configured spans and limits)."""
    return int(round(s * NS_PER_S))


def age_s(stamp_ns: int | None, at_ns: int | None = None) -> float | None:
    """Seconds between ``stamp_ns`` and ``at_ns`` (default: now); ``None`` if nothing was ever stamped."""
    if stamp_ns is None:
        return None
    return seconds((now_ns() if at_ns is None else at_ns) - stamp_ns)


def to_utc(stamp_ns: int, *, mono_now_ns: int | None = None, utc_now: datetime | None = None) -> datetime:
    """Wall-clock UTC of a monotonic stamp, computed at publish time.

    The mapping is read fresh on each call (monotonic "now" and UTC "now" taken together) rather than from an
    offset cached at start-up, so a wall-clock correction made while running is honoured by the next message.
    ``mono_now_ns``/``utc_now`` may be given to make the conversion reproducible (tests, replays).
    """
    if (mono_now_ns is None) != (utc_now is None):
        raise ValueError("to_utc: give both mono_now_ns and utc_now, or neither")
    if mono_now_ns is None:
        mono_now_ns = now_ns()
        utc_now = datetime.now(timezone.utc)
    assert utc_now is not None
    if utc_now.tzinfo is None:
        raise ValueError("to_utc: utc_now must be timezone-aware")
    return utc_now.astimezone(timezone.utc) - timedelta(microseconds=(mono_now_ns - stamp_ns) / 1000)


def utc_iso(stamp_ns: int) -> str:
    """ISO 8601 UTC string (millisecond precision, 'Z' suffix) of a monotonic stamp, for messages."""
    return to_utc(stamp_ns).isoformat(timespec="milliseconds").replace("+00:00", "Z")
