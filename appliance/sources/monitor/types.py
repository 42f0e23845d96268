"""What a patient monitor yields, independent of the wire protocol.

Every object carries ``t_mono_ns``: the ``time.monotonic_ns()`` at which the bytes that produced it
arrived. The monitor's own clock (Masimo line time, IntelliVue relative/absolute time) is never used
for alignment, because the pipeline joins camera, microphone and monitor on one host clock.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np


# Neonatal plausibility limits shared by all monitor parsers (inclusive). A value outside them is
# something no monitor produces for a live newborn, i.e. a corrupt message: HR/pulse 25..300 /min
# (device ranges start at 25-30; neonatal SVT reaches ~300), SpO2 10..100 %, perfusion index 0..20 %.
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "hr": (25.0, 300.0),
    "hr_btb": (25.0, 300.0),
    "pulse_rate": (25.0, 300.0),
    "spo2": (10.0, 100.0),
    "perfusion_index": (0.0, 20.0),
}


def now_ns() -> int:
    """The single clock used to stamp arrivals (kept in one place so tests and code agree)."""
    return time.monotonic_ns()


@dataclass(frozen=True)
class VitalSample:
    """One set of numerics from a monitor.

    A value is ``None`` when the monitor did not send it or when its own quality flags say it is not
    valid; the reason is then in ``flags`` (e.g. ``sensor_off`` or ``SPO2:invalid``) so the quality
    gate can tell "absent" from "present but untrustworthy".
    """

    t_mono_ns: int
    hr: float | None
    spo2: float | None
    pulse_rate: float | None
    perfusion_index: float | None = None
    flags: frozenset[str] = frozenset()
    source: str = ""
    hr_btb: float | None = None


@dataclass(frozen=True)
class WaveChunk:
    """A contiguous run of waveform samples (physical units, e.g. mV) as received in one reply."""

    t_mono_ns: int
    label: str
    fs_hz: float
    samples: np.ndarray
    source: str = ""
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RRIntervals:
    """Beats newly confirmed by the R-peak detector.

    ``beat_t_mono_ns[i]`` is the estimated host time of beat i; ``rr_ms[i]`` is the interval ending at
    beat i, computed from sample indices (exact at the wave's sample rate, free of serial jitter);
    NaN for the first beat after a (re)start, where no previous beat is known.
    """

    t_mono_ns: int
    beat_t_mono_ns: np.ndarray
    rr_ms: np.ndarray
    source: str = ""


@dataclass(frozen=True)
class Rejection:
    """Why some input was not turned into data. ``reason`` is a short, countable key naming the
    field or byte at fault (``implausible:SPO2``, ``bad_fcs``); ``detail`` is for humans/logs."""

    reason: str
    detail: str = ""


class RejectCounter(Counter):
    """Counts rejections by reason; the reader exposes it in its health report."""

    def add(self, rejection: Rejection) -> None:
        self[rejection.reason] += 1


@dataclass
class MonitorHealth:
    """A snapshot of a reader's state, for the service status and the quality gate."""

    connected: bool = False
    protocol: str | None = None
    associated: bool = False
    last_sample_mono_ns: int | None = None
    samples: int = 0
    wave_chunks: int = 0
    beats: int = 0
    connects: int = 0
    disconnects: int = 0
    last_error: str = ""
    rejects: dict[str, int] = field(default_factory=dict)
    thread_restarts: int = 0  # the reader thread died of an exception and was started again
