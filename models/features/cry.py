"""Cry detector for 16 kHz audio: frame energy + YIN pitch + voicing, with hysteresis into cry segments.

One detector for the device (live, fed audio periods) and the dataset loader (offline, ``detect_cry``), so a
training window is called a cry by exactly the rule the bedside uses.

Why this shape: a neonatal cry is loud, voiced and has its fundamental in roughly 250-800 Hz (hyperphonated
cries go higher, but the bulk sits there). Energy alone fires on door slams and ventilator noise; pitch alone
fires on monitor alarms. So a frame is "cry-like" only when it is loud enough, periodic (YIN aperiodicity below
a threshold) and its f0 lies in the cry band. YIN searches a wider lag range than the band (up to 2 kHz) on
purpose: a 1 kHz alarm tone is also periodic at 2x and 3x its period (500 Hz, 333 Hz), and only finding its
true, shortest period rejects it. Hysteresis (an onset run of cry-like frames to start, a hang-over of quiet
frames to end, a lower sustain threshold) merges the expiratory bursts of one cry bout into one segment.

Segment times are on the monotonic clock, derived from the audio periods' arrival stamps.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

NS_PER_S = 1_000_000_000  # segment stamps are monotonic nanoseconds, as everywhere in the appliance



class PcmPeriod(Protocol):
    """What :meth:`CryDetector.push_period` reads from a microphone period (the device's ``AudioPeriod`` has it);
    a protocol, so that models/ never imports the appliance that uses it."""

    samples: np.ndarray
    t_ns: int
    gap_before: bool


@dataclass(frozen=True)
class CryConfig:
    """Detector settings (times in seconds, levels in dBFS where a full-scale square wave is 0 dBFS)."""

    rate: int = 16000
    frame_len: int = 512
    hop: int = 256
    f0_min_hz: float = 250.0
    f0_max_hz: float = 800.0
    search_min_hz: float = 200.0
    search_max_hz: float = 2000.0
    yin_threshold: float = 0.2
    voicing_max_aperiodicity: float = 0.3
    on_dbfs: float = -40.0
    off_dbfs: float = -48.0
    onset_s: float = 0.1
    hangover_s: float = 0.4
    min_segment_s: float = 0.25
    history: int = 256

    def __post_init__(self) -> None:
        if self.hop <= 0 or self.frame_len <= self.hop // 2:
            raise ValueError(f"CryConfig: need hop > 0 and frame_len > hop/2, got {self.frame_len}, {self.hop}")
        if self.max_lag >= self.frame_len:
            raise ValueError(
                f"CryConfig.frame_len {self.frame_len} too short for search_min_hz {self.search_min_hz} "
                f"(needs > {self.max_lag} samples)"
            )
        if not self.search_min_hz <= self.f0_min_hz < self.f0_max_hz <= self.search_max_hz:
            raise ValueError("CryConfig: need search_min_hz <= f0_min_hz < f0_max_hz <= search_max_hz")
        if self.off_dbfs > self.on_dbfs:
            raise ValueError(f"CryConfig.off_dbfs {self.off_dbfs} must not exceed on_dbfs {self.on_dbfs}")

    @property
    def min_lag(self) -> int:
        return max(2, int(math.floor(self.rate / self.search_max_hz)))

    @property
    def max_lag(self) -> int:
        return int(math.ceil(self.rate / self.search_min_hz))


@dataclass(frozen=True)
class FrameFeatures:
    """Per-frame features: level (dBFS), f0 (Hz, NaN when unvoiced) and YIN aperiodicity (0 periodic .. 1)."""

    dbfs: np.ndarray
    f0_hz: np.ndarray
    aperiodicity: np.ndarray


@dataclass(frozen=True)
class CrySegment:
    """One cry bout on the monotonic clock; ``end_ns`` is ``None`` while the cry is still going on."""

    start_ns: int
    end_ns: int | None
    peak_dbfs: float
    median_f0_hz: float

    @property
    def ongoing(self) -> bool:
        return self.end_ns is None

    def duration_s(self, at_ns: int | None = None) -> float:
        end = self.end_ns if self.end_ns is not None else at_ns
        if end is None:
            raise ValueError("CrySegment.duration_s: ongoing segment needs at_ns")
        return (end - self.start_ns) / NS_PER_S


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1); float input is passed through as float32."""
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    raise TypeError(f"cry: audio samples must be int16 or float, got {samples.dtype}")


def analyze_frames(frames: np.ndarray, config: CryConfig) -> FrameFeatures:
    """Level, YIN f0 and aperiodicity for each row of ``frames`` (shape F x frame_len, float in [-1, 1])."""
    if frames.ndim != 2 or frames.shape[1] != config.frame_len:
        raise ValueError(f"analyze_frames: expected (F, {config.frame_len}) frames, got {frames.shape}")
    f = frames.astype(np.float64)
    rms = np.sqrt(np.mean(f * f, axis=1))
    dbfs = 20 * np.log10(np.maximum(rms, 1e-6))
    n_frames = f.shape[0]
    max_lag, min_lag = config.max_lag, config.min_lag
    w = config.frame_len - max_lag
    # YIN difference function d(tau) and its cumulative-mean normalisation d'(tau).
    d = np.zeros((n_frames, max_lag + 1))
    base = f[:, :w]
    for tau in range(1, max_lag + 1):
        diff = base - f[:, tau:tau + w]
        d[:, tau] = np.einsum("ij,ij->i", diff, diff)
    cum = np.cumsum(d[:, 1:], axis=1)
    taus = np.arange(1, max_lag + 1)
    cmnd = np.ones_like(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        cmnd[:, 1:] = np.where(cum > 0, d[:, 1:] * taus / cum, 1.0)
    f0 = np.full(n_frames, np.nan)
    aper = np.ones(n_frames)
    for i in range(n_frames):
        c = cmnd[i]
        below = np.nonzero(c[min_lag:max_lag] < config.yin_threshold)[0]
        if below.size:
            tau = int(below[0]) + min_lag
            while tau + 1 < max_lag and c[tau + 1] < c[tau]:
                tau += 1  # walk down to the bottom of the first dip
        else:
            tau = int(np.argmin(c[min_lag:max_lag])) + min_lag
        aper[i] = c[tau]
        # parabolic interpolation of the dip for sub-sample period
        a, b, cc = c[tau - 1], c[tau], c[tau + 1]
        den = a - 2 * b + cc
        shift = 0.5 * (a - cc) / den if den > 0 else 0.0
        period = tau + float(np.clip(shift, -1, 1))
        if aper[i] < config.voicing_max_aperiodicity:
            f0[i] = config.rate / period
    return FrameFeatures(dbfs.astype(np.float32), f0.astype(np.float32), aper.astype(np.float32))


class CryDetector:
    """Streaming detector: push audio periods, read segments. Thread-safe (a lock guards its state)."""

    def __init__(self, config: CryConfig | None = None) -> None:
        self.config = config or CryConfig()
        cfg = self.config
        self._onset_frames = max(1, math.ceil(cfg.onset_s * cfg.rate / cfg.hop))
        self._hang_frames = max(1, math.ceil(cfg.hangover_s * cfg.rate / cfg.hop))
        self._lock = threading.Lock()
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # absolute index of _buf[0]
        self._total = 0  # absolute index one past the last sample pushed
        self._anchors: deque[tuple[int, int, int]] = deque()  # (first idx, last idx, t_ns of last)
        self._closed: deque[CrySegment] = deque(maxlen=cfg.history)
        self._run_start: int | None = None  # frame-start time of the current onset run
        self._run_len = 0
        self._in_cry = False
        self._seg_start = 0
        self._seg_last_end = 0
        self._quiet = 0
        self._seg_peak = -120.0
        self._seg_f0: list[float] = []

    # -- input ---------------------------------------------------------------------------------------------
    def push(self, samples: np.ndarray, t_last_ns: int, gap_before: bool = False) -> list[CrySegment]:
        """Feed a chunk whose last sample arrived at ``t_last_ns``; returns segments closed by it."""
        x = to_float(np.asarray(samples).reshape(-1))
        with self._lock:
            if gap_before:  # never analyse a frame that straddles lost audio
                self._buf = np.zeros(0, dtype=np.float32)
                self._buf_start = self._total
                self._anchors.clear()
            if x.size == 0:
                return []
            first = self._total
            self._total += x.size
            self._anchors.append((first, self._total - 1, t_last_ns))
            self._buf = np.concatenate([self._buf, x])
            return self._process()

    def push_period(self, period: PcmPeriod) -> list[CrySegment]:
        """Feed one microphone period (the device's ``AudioPeriod``; usable directly as its sink)."""
        return self.push(period.samples, period.t_ns, period.gap_before)

    def flush(self) -> list[CrySegment]:
        """Close an ongoing segment (end of a recording); returns it if it was long enough."""
        with self._lock:
            return self._close()

    # -- output --------------------------------------------------------------------------------------------
    def segments(self) -> list[CrySegment]:
        """Closed segments (oldest first) followed by the ongoing one, if any."""
        with self._lock:
            out = list(self._closed)
            cur = self._ongoing()
            return out + ([cur] if cur is not None else [])

    def segment_at(self, t_ns: int, hold_s: float = 0.0) -> CrySegment | None:
        """The segment current at ``t_ns``: ongoing (and started by then), or closed within ``hold_s`` before."""
        hold_ns = int(hold_s * NS_PER_S)
        for seg in reversed(self.segments()):
            if seg.start_ns > t_ns:
                continue
            if seg.end_ns is None or seg.end_ns >= t_ns - hold_ns:
                return seg
            return None
        return None

    # -- internals (lock held) -----------------------------------------------------------------------------
    def _time(self, idx: int) -> int:
        for first, last, t in self._anchors:
            if first <= idx <= last:
                return t - (last - idx) * NS_PER_S // self.config.rate
        raise AssertionError(f"cry: no time anchor for sample {idx}")

    def _ongoing(self) -> CrySegment | None:
        if not self._in_cry:
            return None
        f0 = float(np.median(self._seg_f0)) if self._seg_f0 else float("nan")
        return CrySegment(self._seg_start, None, self._seg_peak, f0)

    def _process(self) -> list[CrySegment]:
        cfg = self.config
        n = 0 if self._buf.size < cfg.frame_len else 1 + (self._buf.size - cfg.frame_len) // cfg.hop
        if n == 0:
            return []
        idx = np.arange(n)[:, None] * cfg.hop + np.arange(cfg.frame_len)[None, :]
        feats = analyze_frames(self._buf[idx], cfg)
        closed: list[CrySegment] = []
        for k in range(n):
            a = self._buf_start + k * cfg.hop
            t0, t1 = self._time(a), self._time(a + cfg.frame_len - 1)
            db, f0 = float(feats.dbfs[k]), float(feats.f0_hz[k])
            in_band = not math.isnan(f0) and cfg.f0_min_hz <= f0 <= cfg.f0_max_hz
            cry_like = in_band and db >= cfg.on_dbfs
            sustain = in_band and db >= cfg.off_dbfs
            if not self._in_cry:
                if cry_like:
                    if self._run_len == 0:
                        self._run_start = t0
                        self._seg_peak, self._seg_f0 = db, []
                    self._run_len += 1
                    self._seg_peak = max(self._seg_peak, db)
                    self._seg_f0.append(f0)
                    if self._run_len >= self._onset_frames:
                        self._in_cry = True
                        self._seg_start = int(self._run_start)  # type: ignore[arg-type]
                        self._seg_last_end = t1
                        self._quiet = 0
                else:
                    self._run_len = 0
            else:
                if sustain:
                    self._quiet = 0
                    self._seg_last_end = t1
                    self._seg_peak = max(self._seg_peak, db)
                    self._seg_f0.append(f0)
                else:
                    self._quiet += 1
                    if self._quiet >= self._hang_frames:
                        closed.extend(self._close())
        consumed = n * cfg.hop
        self._buf = self._buf[consumed:]
        self._buf_start += consumed
        while self._anchors and self._anchors[0][1] < self._buf_start:
            self._anchors.popleft()
        return closed

    def _close(self) -> list[CrySegment]:
        if not self._in_cry:
            return []
        seg = replace(self._ongoing(), end_ns=self._seg_last_end)  # type: ignore[type-var]
        self._in_cry = False
        self._run_len = 0
        self._quiet = 0
        if seg.duration_s() < self.config.min_segment_s:
            return []
        self._closed.append(seg)
        return [seg]


def detect_cry(samples: np.ndarray, rate: int = 16000, t0_ns: int = 0,
               config: CryConfig | None = None) -> list[CrySegment]:
    """Offline convenience: cry segments in a whole recording whose first sample is at ``t0_ns``."""
    cfg = config or CryConfig(rate=rate)
    if cfg.rate != rate:
        raise ValueError(f"detect_cry: rate {rate} differs from config.rate {cfg.rate}")
    det = CryDetector(cfg)
    x = np.asarray(samples).reshape(-1)
    det.push(x, t0_ns + (x.size - 1) * NS_PER_S // rate)
    det.flush()
    return det.segments()
