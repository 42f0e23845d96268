"""Synthetic bedside-monitor data: heart beats, 1 Hz HR/SpO2 numerics with gaps, and a 250 Hz ECG lead.

Why this shape: acute pain raises heart rate by tens of bpm and lowers short-term variability
(RMSSD), and SpO2 may dip, but the response lags the stimulus by seconds and varies between infants,
and probes fall off or read through motion. So vitals are a slow, gappy witness of pain: informative,
never sufficient. Beats are simulated first and everything else (numerics, RR rows, ECG) derives from
them, as on a real monitor.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from models.data.layout import ECG_RATE_HZ
from models.data.synth_ratings import PainScenario

# PQRST as Gaussians: (offset from R in s, amplitude mV, width s). Neonatal intervals are short.
PQRST = ((-0.09, 0.10, 0.015), (-0.018, -0.10, 0.006), (0.0, 1.0, 0.008), (0.018, -0.22, 0.008),
         (0.15, 0.25, 0.03))


@dataclass(frozen=True)
class VitalsOptions:
    sensor_off_per_min: float = 0.3  # SpO2 probe off / pulse search episodes
    lead_off_per_min: float = 0.05  # ECG leads off: no HR, no beats
    write_ecg: bool = True


@dataclass(frozen=True)
class VitalsResult:
    monitor_clock_at_zero: float  # monitor time at recording time 0 (clock offset = -this)
    first_t: float  # first row, monitor clock
    last_t: float
    ecg_start: float | None  # monitor clock


def _lowpass(x: np.ndarray, dt: float, tau: float) -> np.ndarray:
    a = np.exp(-dt / tau)
    return lfilter([1 - a], [1, -a], x)


def _spans(rng: np.random.Generator, start: float, duration: float, per_min: float, lo: float,
           hi: float) -> list[tuple[float, float]]:
    out = []
    for _ in range(rng.poisson(per_min * duration / 60.0)):
        a = start + rng.uniform(0, duration)
        out.append((a, a + rng.uniform(lo, hi)))
    return out


def _mask(t: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
    m = np.zeros(t.shape, dtype=bool)
    for a, b in spans:
        m |= (t >= a) & (t < b)
    return m


def simulate_beats(rng: np.random.Generator, scenario: PainScenario, start_s: float, end_s: float, *,
                   preterm: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beat times (recording clock), RR intervals (s), and the driving pain response on a 10 Hz grid."""
    dt = 0.1
    grid = np.arange(start_s - 30.0, end_s + 1.0, dt)
    # Sluggish autonomic response: seconds of delay, then a first-order lag of 8-20 s, so the HR of a
    # 10 s window still carries the pain of the previous ones (partial, lagging information).
    delay = rng.uniform(3.0, 7.0)
    drive = _lowpass(scenario.pain_at(grid - delay), dt, rng.uniform(8.0, 20.0))
    base = rng.normal(150.0, 8.0) if preterm else rng.normal(135.0, 8.0)
    gain = rng.uniform(10.0, 40.0) * (0.8 if preterm else 1.0)
    drift = _lowpass(rng.normal(0, 1, grid.size), dt, 20.0) * 6.0
    hr = base + gain * drive + drift
    resp_hz = rng.uniform(40, 60) / 60.0
    hrv = rng.uniform(0.015, 0.03)

    beats, rrs = [], []
    t = grid[0]
    ar = 0.0
    while t < end_s:
        i = min(int((t - grid[0]) / dt), grid.size - 1)
        ar = 0.5 * ar + rng.normal(0, 1)
        variability = hrv * (1.0 - 0.7 * drive[i])  # pain lowers RMSSD
        rr = 60.0 / hr[i] * (1.0 + variability * ar + 0.005 * np.sin(2 * np.pi * resp_hz * t))
        t += rr
        beats.append(t)
        rrs.append(rr)
    return np.asarray(beats), np.asarray(rrs), np.interp(np.asarray(beats), grid, drive)


def ecg_from_beats(rng: np.random.Generator, beats: np.ndarray, start_s: float, n: int,
                   lead_off: list[tuple[float, float]]) -> np.ndarray:
    """Single lead at 250 Hz (mV): PQRST at each beat, baseline wander, noise; noise only while leads are off."""
    t = start_s + np.arange(n) / ECG_RATE_HZ
    ecg = 0.05 * np.sin(2 * np.pi * 0.3 * t) + rng.normal(0, 0.02, n)
    half = int(0.3 * ECG_RATE_HZ)
    for b in beats:
        c = int(round((b - start_s) * ECG_RATE_HZ))
        lo, hi = max(c - half, 0), min(c + half, n)
        if hi <= lo:
            continue
        x = t[lo:hi] - b
        for off, amp, width in PQRST:
            ecg[lo:hi] += amp * np.exp(-0.5 * ((x - off) / width) ** 2)
    off = _mask(t, lead_off)
    ecg[off] = rng.normal(0, 0.2, int(off.sum()))
    return ecg.astype(np.float32)


def render_vitals(directory: Path, rng: np.random.Generator, scenario: PainScenario, *, preterm: bool,
                  start_s: float, duration_s: float, options: VitalsOptions) -> VitalsResult:
    """Write vitals.csv (and ecg.npy) for recording time [start_s, start_s + duration_s) on a monitor clock."""
    end_s = start_s + duration_s
    m0 = float(np.round(rng.uniform(1000.0, 80000.0), 3))  # monitor uptime at recording time 0
    beats, rrs, _ = simulate_beats(rng, scenario, start_s, end_s, preterm=preterm)
    lead_off = _spans(rng, start_s, duration_s, options.lead_off_per_min, 3.0, 10.0)
    sensor_off = _spans(rng, start_s, duration_s, options.sensor_off_per_min, 3.0, 20.0)
    # Motion artifacts: the SpO2 probe reads through limb movement in windows with arms/legs scored.
    for w in np.flatnonzero(scenario.items[:, 3] + scenario.items[:, 4] > 0):
        if rng.random() < 0.35:
            a = scenario.window_starts[w] + rng.uniform(0, scenario.window_s)
            sensor_off.append((a, a + rng.uniform(2.0, 8.0)))

    keep = ~_mask(beats, lead_off) & (beats >= start_s)
    beat_t, beat_rr = beats[keep], rrs[keep]

    # 1 Hz numerics on the monitor's own second ticks.
    ticks = np.arange(np.ceil(start_s + m0), end_s + m0, 1.0) - m0
    hr = np.full(ticks.shape, np.nan)
    for i, tk in enumerate(ticks):
        recent = rrs[(beats > tk - 4.0) & (beats <= tk)]
        if recent.size:
            hr[i] = np.round(60.0 / recent.mean())
    hr[_mask(ticks, lead_off)] = np.nan
    sat_base = rng.uniform(91.0, 95.0) if preterm else rng.uniform(96.0, 99.5)
    dip = rng.uniform(0.0, 8.0)
    drive = _lowpass(scenario.pain_at(ticks - rng.uniform(8.0, 20.0)), 1.0, rng.uniform(5.0, 12.0))
    spo2 = np.clip(np.round(sat_base - dip * drive + rng.normal(0, 0.6, ticks.size)), 70, 100)
    spo2[_mask(ticks, sensor_off)] = np.nan

    rows = [(tk + m0, h, s, np.nan) for tk, h, s in zip(ticks, hr, spo2)]
    rows += [(b + m0, np.nan, np.nan, rr * 1000.0) for b, rr in zip(beat_t, beat_rr)]
    rows.sort(key=lambda r: r[0])

    def cell(v: float, fmt: str) -> str:
        return "" if np.isnan(v) else format(v, fmt)

    with (Path(directory) / "vitals.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["t_s", "hr_bpm", "spo2_pct", "rr_ms"])
        for t, h, s, rr in rows:
            w.writerow([f"{t:.3f}", cell(h, ".0f"), cell(s, ".0f"), cell(rr, ".1f")])

    ecg_start = None
    if options.write_ecg:
        n = int(duration_s * ECG_RATE_HZ)
        np.save(Path(directory) / "ecg.npy", ecg_from_beats(rng, beats, start_s, n, lead_off))
        ecg_start = start_s + m0
    return VitalsResult(m0, rows[0][0], rows[-1][0], ecg_start)
