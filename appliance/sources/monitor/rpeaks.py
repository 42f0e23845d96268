"""R-peak detection on a single ECG lead (Pan-Tompkins style), tuned for newborns.

Why these numbers: neonatal RR is ~250-600 ms (100-240 /min) and the QRS is narrow (~50-60 ms), so the
band-pass is 5-30 Hz (wider than the adult 5-15 Hz), the integration window 60 ms, and the refractory
period 200 ms. The adaptive thresholds follow Pan & Tompkins (1985): running signal/noise peak levels,
threshold = noise + 0.25 (signal - noise), and a search-back at half threshold when no beat was found for
1.66 mean RR. The R location is then refined on the band-passed ECG with parabolic interpolation, so
beat times are sub-sample (RR error well under a sample period at 250-500 Hz).

``detect_rpeaks`` works on a whole record; ``StreamingRPeakDetector`` runs it over a sliding buffer and
emits each beat once, a short lag after it happened, as the reader receives wave chunks.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

REFRACTORY_S = 0.200
BAND_HZ = (5.0, 30.0)
INTEGRATION_S = 0.060
SEARCH_S = 0.050


def _bandpass(ecg: np.ndarray, fs: float) -> np.ndarray:
    high = min(BAND_HZ[1], 0.45 * fs)
    sos = signal.butter(2, [BAND_HZ[0], high], btype="bandpass", fs=fs, output="sos")
    padlen = min(len(ecg) - 1, int(fs))
    return signal.sosfiltfilt(sos, ecg, padlen=padlen)


def detect_rpeaks(ecg: np.ndarray, fs: float) -> np.ndarray:
    """R-peak positions as fractional sample indices (sorted). Empty for records under 1 s."""
    ecg = np.asarray(ecg, dtype=np.float64)
    if len(ecg) < int(fs) or not np.all(np.isfinite(ecg)):
        return np.empty(0)
    filtered = _bandpass(ecg - np.median(ecg), fs)
    energy = np.gradient(filtered) ** 2
    width = max(1, int(round(INTEGRATION_S * fs)))
    integrated = np.convolve(energy, np.ones(width) / width, mode="same")
    refractory = max(1, int(round(REFRACTORY_S * fs)))
    candidates, _ = signal.find_peaks(integrated, distance=refractory)
    if len(candidates) == 0:
        return np.empty(0)
    heights = integrated[candidates]
    # initial levels from the first 2 s (Pan-Tompkins learning phase)
    first = heights[candidates < 2 * fs] if np.any(candidates < 2 * fs) else heights
    spk = 0.5 * float(np.max(first))
    npk = 0.5 * float(np.mean(integrated[: int(2 * fs)]))
    beats: list[int] = []
    rrs: list[int] = []
    for idx, height in zip(candidates, heights):
        threshold = npk + 0.25 * (spk - npk)
        if beats and rrs:
            mean_rr = float(np.mean(rrs[-8:]))
            if idx - beats[-1] > 1.66 * mean_rr:
                # search back for a missed beat between the last beat and this candidate
                lo, hi = beats[-1] + refractory, idx - refractory
                window = (candidates > lo) & (candidates < hi) & (heights > 0.5 * threshold)
                if np.any(window):
                    best = candidates[window][np.argmax(heights[window])]
                    rrs.append(best - beats[-1])
                    beats.append(int(best))
                    spk = 0.25 * integrated[best] + 0.75 * spk
        if height > threshold and (not beats or idx - beats[-1] >= refractory):
            if beats:
                rrs.append(idx - beats[-1])
            beats.append(int(idx))
            spk = 0.125 * height + 0.875 * spk
        else:
            npk = 0.125 * height + 0.875 * npk
    return _refine(filtered, np.asarray(beats), fs)


def _refine(filtered: np.ndarray, beats: np.ndarray, fs: float) -> np.ndarray:
    """Move each detection to the local maximum of the band-passed ECG, with sub-sample precision."""
    half = max(1, int(round(SEARCH_S * fs)))
    out = []
    for b in beats:
        lo, hi = max(0, b - half), min(len(filtered), b + half + 1)
        k = lo + int(np.argmax(filtered[lo:hi]))
        if 0 < k < len(filtered) - 1:
            y0, y1, y2 = filtered[k - 1 : k + 2]
            denom = y0 - 2 * y1 + y2
            offset = 0.5 * (y0 - y2) / denom if denom < 0 else 0.0
            out.append(k + float(np.clip(offset, -0.5, 0.5)))
        else:
            out.append(float(k))
    positions = np.asarray(out)
    if len(positions) > 1:  # refinement can merge two detections onto one peak
        keep = np.concatenate(([True], np.diff(positions) >= REFRACTORY_S * fs))
        positions = positions[keep]
    return positions


def rr_intervals_ms(peaks: np.ndarray, fs: float) -> np.ndarray:
    return np.diff(np.asarray(peaks, dtype=np.float64)) * 1000.0 / fs


class StreamingRPeakDetector:
    """Feed consecutive ECG chunks; get each beat once, ``lag_s`` after it, with its RR interval.

    Beat times are ``anchor + index / fs`` where the anchor is the arrival time of the first chunk minus
    its duration: one clock offset per stream, so serial jitter does not leak into RR (which comes from
    sample indices). Call ``reset`` after a gap (reconnect), since indices no longer line up.
    """

    def __init__(self, fs: float, window_s: float = 8.0, lag_s: float = 0.6) -> None:
        self.fs = fs
        self.window = int(window_s * fs)
        self.lag = int(lag_s * fs)
        self.learn = int(2.0 * fs)
        self.reset()

    def reset(self) -> None:
        self._buf = np.empty(0)
        self._start = 0  # absolute index of _buf[0]
        self._total = 0
        self._anchor_ns: int | None = None
        self._last_beat: float | None = None

    def feed(self, samples: np.ndarray, t_mono_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (beat times in monotonic ns, RR in ms; NaN where the previous beat is unknown)."""
        samples = np.asarray(samples, dtype=np.float64)
        if self._anchor_ns is None:
            self._anchor_ns = t_mono_ns - int(len(samples) * 1e9 / self.fs)
        self._buf = np.concatenate((self._buf, samples))
        self._total += len(samples)
        if len(self._buf) > self.window:
            drop = len(self._buf) - self.window
            self._buf = self._buf[drop:]
            self._start += drop
        if len(self._buf) < self.learn:
            return np.empty(0, dtype=np.int64), np.empty(0)  # Pan-Tompkins learning phase
        peaks = detect_rpeaks(self._buf, self.fs) + self._start
        horizon = self._total - self.lag
        refractory = REFRACTORY_S * self.fs
        # the left edge of the buffer is unreliable (filter transient): only accept beats that are
        # new, settled (before the lag horizon) and not in the first 0.3 s of the buffer
        edge = self._start + int(0.3 * self.fs)
        fresh = [
            p for p in peaks
            if p <= horizon and p >= edge and (self._last_beat is None or p - self._last_beat >= refractory)
        ]
        times, rrs = [], []
        for p in fresh:
            rrs.append(np.nan if self._last_beat is None else (p - self._last_beat) * 1000.0 / self.fs)
            times.append(self._anchor_ns + int(p * 1e9 / self.fs))
            self._last_beat = p
        return np.asarray(times, dtype=np.int64), np.asarray(rrs, dtype=np.float64)
