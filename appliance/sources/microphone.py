"""Microphone source: ALSA capture through pyalsaaudio, 16 kHz mono S16_LE, in periods.

Why this shape: ALSA reads block one period at a time, so capture runs in its own thread and stamps each
period at arrival on the monotonic clock. Arrival is when the period's *last* sample became available, so that
is the stamp (the first sample is ``(n - 1) / rate`` earlier). An overrun (the reader fell behind; pyalsaaudio
returns ``-EPIPE`` as the length) loses samples but not the device: it is counted and the next period is
flagged ``gap_before`` so nobody treats the audio as continuous across it. An ``ALSAAudioError`` (USB
microphone unplugged, device vanished) closes the PCM and reopens it with exponential backoff.

ALSA's file plugin (used by the simulated bed and the tests) is not paced in real time: reads return at once
and, past end of file, return zeros forever. ``pace_realtime`` sleeps so periods arrive at the real rate.

The capture thread is supervised (:mod:`appliance.sources.supervise`): an exception nobody expected is logged,
the thread is started again with backoff, the count is in :class:`MicrophoneHealth`, and the first period
after the restart is flagged ``gap_before``.
"""
from __future__ import annotations

import errno
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from appliance.clock import NS_PER_S, now_ns
from appliance.config import default
from appliance.sources.supervise import SupervisedThread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioPeriod:
    """One ALSA period: int16 mono samples, stamped at arrival (= time of its last sample)."""

    t_ns: int
    samples: np.ndarray
    rate: int
    seq: int
    gap_before: bool = False

    @property
    def start_ns(self) -> int:
        """Stamp of the first sample, derived from the last one and the nominal rate."""
        return self.t_ns - (len(self.samples) - 1) * NS_PER_S // self.rate


@dataclass(frozen=True)
class MicrophoneConfig:
    """ALSA device and period geometry. ``period_size`` frames per read (512 = 32 ms at 16 kHz)."""

    device: str = default("microphone", "device")
    rate: int = default("microphone", "rate")
    channels: int = 1
    period_size: int = default("microphone", "period_frames")
    periods: int = 4
    pace_realtime: bool = default("microphone", "pace_realtime")
    reopen_backoff_s: float = 0.1
    reopen_backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"MicrophoneConfig.rate must be > 0, got {self.rate}")
        if self.channels != 1:
            raise ValueError(f"MicrophoneConfig.channels must be 1 (mono capture), got {self.channels}")
        if self.period_size <= 0 or self.periods < 2:
            raise ValueError(
                f"MicrophoneConfig.period_size must be > 0 and periods >= 2, got {self.period_size}, {self.periods}"
            )
        for name in ("reopen_backoff_s", "reopen_backoff_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"MicrophoneConfig.{name} must be a finite number > 0, got {value!r}")
        if self.reopen_backoff_max_s < self.reopen_backoff_s:
            raise ValueError(f"MicrophoneConfig.reopen_backoff_max_s ({self.reopen_backoff_max_s}) must be >= "
                             f"reopen_backoff_s ({self.reopen_backoff_s})")


@dataclass(frozen=True)
class MicrophoneHealth:
    open: bool
    periods: int
    samples: int
    overruns: int
    reopen_count: int
    open_failures: int
    last_period_age_s: float | None
    last_error: str | None
    thread_restarts: int = 0  # the capture thread died of an exception and was started again


PcmFactory = Callable[[MicrophoneConfig], Any]


def open_alsa_pcm(config: MicrophoneConfig) -> Any:
    """Open the capture PCM with pyalsaaudio (the library is imported here, at first use, so that
    ``ALSA_CONFIG_PATH`` set by a launcher is honoured and hosts without ALSA can still import this module)."""
    import alsaaudio

    return alsaaudio.PCM(
        type=alsaaudio.PCM_CAPTURE,
        mode=alsaaudio.PCM_NORMAL,
        rate=config.rate,
        channels=config.channels,
        format=alsaaudio.PCM_FORMAT_S16_LE,
        periodsize=config.period_size,
        periods=config.periods,
        device=config.device,
    )


class Microphone:
    """Captures in its own thread and pushes :class:`AudioPeriod` objects to ``sink``.

    ``pcm_factory`` opens the PCM (default: :func:`open_alsa_pcm`); it is a seam for wrapping the real PCM,
    e.g. to inject a device loss in tests.
    """

    def __init__(self, config: MicrophoneConfig, sink: Callable[[AudioPeriod], None],
                 pcm_factory: PcmFactory = open_alsa_pcm) -> None:
        self.config = config
        self._sink = sink
        self._factory = pcm_factory
        self._stop = threading.Event()
        self._thread: SupervisedThread | None = None
        self._lock = threading.Lock()
        self._open = False
        self._periods = 0
        self._samples = 0
        self._overruns = 0
        self._reopens = 0
        self._open_failures = 0
        self._thread_restarts = 0
        self._opened_before = False  # across restarts of the thread: a reopen after a crash is a gap too
        self._last_ns: int | None = None
        self._last_error: str | None = None

    def start(self) -> "Microphone":
        if self._thread is not None:
            raise RuntimeError("Microphone.start: already started")
        cfg = self.config
        self._thread = SupervisedThread("microphone", self._run, keep_running=lambda: not self._stop.is_set(),
                                        wait=self._stop.wait, backoff_s=(cfg.reopen_backoff_s, cfg.reopen_backoff_max_s),
                                        on_crash=self._crashed).start()
        return self

    def _crashed(self, exc: BaseException) -> None:
        """The capture thread died (the supervisor logged it and restarts it): count it, say why."""
        with self._lock:
            self._thread_restarts += 1
            self._open = False
            self._last_error = f"driver thread died: {type(exc).__name__}: {exc}"

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop and join (a read blocks at most one period, so this returns promptly)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def __enter__(self) -> "Microphone":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self) -> MicrophoneHealth:
        with self._lock:
            age = None if self._last_ns is None else (now_ns() - self._last_ns) / NS_PER_S
            return MicrophoneHealth(self._open, self._periods, self._samples, self._overruns, self._reopens,
                                    self._open_failures, age, self._last_error, self._thread_restarts)

    def _error(self, msg: str) -> None:
        with self._lock:
            if msg != self._last_error:
                log.warning("microphone %s: %s", self.config.device, msg)
            self._last_error = msg

    def _run(self) -> None:
        cfg = self.config
        backoff = cfg.reopen_backoff_s
        gap = False
        while not self._stop.is_set():
            try:
                pcm = self._factory(cfg)
            except Exception as exc:  # ALSAAudioError: no such device, busy, file missing...
                with self._lock:
                    self._open_failures += 1
                self._error(f"open failed: {exc}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, cfg.reopen_backoff_max_s)
                continue
            backoff = cfg.reopen_backoff_s
            with self._lock:
                self._open = True
                if self._opened_before:
                    self._reopens += 1
            gap = gap or self._opened_before  # audio lost while the device was away (or the thread restarted)
            self._opened_before = True
            try:
                gap = self._pump(pcm, gap)
            finally:
                with self._lock:
                    self._open = False
                try:
                    pcm.close()
                except Exception:
                    pass

    def _pump(self, pcm: Any, gap: bool) -> bool:
        """Read periods until stop or a device error; returns whether a gap is pending."""
        cfg = self.config
        t0 = now_ns()
        paced_samples = 0
        while not self._stop.is_set():
            try:
                length, data = pcm.read()
            except Exception as exc:  # device gone or in an unrecoverable state: reopen
                self._error(f"read failed: {exc}")
                return True
            t = now_ns()
            if length < 0:
                if length == -errno.EPIPE:
                    with self._lock:
                        self._overruns += 1
                    self._error("overrun (-EPIPE): samples lost")
                    gap = True
                    continue
                self._error(f"read returned error {length}")
                return True
            if length == 0:
                continue
            samples = np.frombuffer(data, dtype="<i2")[: length * cfg.channels].copy()
            if cfg.pace_realtime:
                paced_samples += len(samples)
                due = t0 + paced_samples * NS_PER_S // cfg.rate
                if due > t and self._stop.wait((due - t) / NS_PER_S):
                    return gap
                t = max(now_ns(), t)
            with self._lock:
                seq = self._periods
                self._periods += 1
                self._samples += len(samples)
                self._last_ns = t
            try:
                self._sink(AudioPeriod(t, samples, cfg.rate, seq, gap))
            except Exception:
                log.exception("microphone: sink raised")
            gap = False
        return gap


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    """Poll ``predicate`` until true or timeout (used by start-up code waiting for a first period)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()
