"""Synthetic bedside-monitor data: heart beats, 1 Hz HR/SpO2 numerics with gaps, and a 250 Hz ECG lead.

Why this shape: acute pain raises heart rate by tens of bpm and lowers short-term variability
(RMSSD), and SpO2 may dip, but the response lags the stimulus by seconds and varies between infants,
and probes fall off or read through motion. So vitals are a slow, gappy witness of pain: informative,
never sufficient. Beats are simulated first and everything else (numerics, RR rows, ECG) derives from
them, as on a real monitor.

Monitor kinds: what ``vitals.csv`` holds depends on the monitor the appliance reads at that bed
(``appliance/sources/monitor/``), so a cohort has a mix of them (``VitalsOptions.monitor_mix``):

* ``intellivue`` (Philips IntelliVue, MIB/RS232 export): HR from the ECG (R-peaks, 4 s average), every beat's
  RR interval, SpO2 from the probe, and the ECG II wave (``ecg.npy``);
* ``masimo`` (Masimo Radical-7 ASCII 1): SpO2 and the pulse rate from the pleth (8 s average) once a second,
  no beat-to-beat data and no ECG: the model gets no RR intervals (no HR channel, no HRV), and a probe off
  loses the pulse rate as well as SpO2.

Confounders (``synth_confounders``): motion artefacts during limb movement (false SpO2 dips; an erratic pulse
rate on the pleth; missed and extra R-peaks in a moving ECG), the physiological lag (switchable), and monitor
dropouts (nothing at all arrives: no rows, no beats, a flat ECG).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.signal import lfilter

from models.data.layout import ECG_RATE_HZ
from models.data.synth_mix import Mix, validate_mix
from models.data.synth_ratings import PainScenario

# PQRST as Gaussians: (offset from R in s, amplitude mV, width s). Neonatal intervals are short.
PQRST = ((-0.09, 0.10, 0.015), (-0.018, -0.10, 0.006), (0.0, 1.0, 0.008), (0.018, -0.22, 0.008),
         (0.15, 0.25, 0.03))
MONITORS: tuple[str, ...] = ("intellivue", "masimo")  # the kinds of appliance/sources/monitor/
HR_AVERAGING_S = {"intellivue": 4.0, "masimo": 8.0}  # the numerics' HR: ECG beats / pleth pulses over this
# The physiological lag (s): the heart rate follows the pain after a delay, through a first-order lag that makes
# it outlast the behaviour; SpO2 dips later still. Without the lag both follow the pain within NO_LAG_TAU_S.
HR_DELAY_S, HR_TAU_S = (3.0, 7.0), (8.0, 20.0)
SPO2_DELAY_S, SPO2_TAU_S = (8.0, 20.0), (5.0, 12.0)
NO_LAG_TAU_S = 1.0
# Motion artefact sizes: a false SpO2 dip (points) and a pulse-rate error on the pleth (bpm), both large (the
# probe sits on the moving limb); the ECG is on the chest and its HR the reference clinicians check the oximeter
# against, so a moving ECG only now and then misses an R-peak or finds a spurious one (chance per beat).
ARTEFACT_DIP_PCT = (6.0, 20.0)
ARTEFACT_PR_BPM = (15.0, 45.0)
ARTEFACT_MISSED_BEAT, ARTEFACT_EXTRA_BEAT = 0.06, 0.06
MIN_RR_S = 0.18  # a spurious beat never makes an interval shorter than this (plausible range starts at 0.15 s)


@dataclass(frozen=True)
class VitalsOptions:
    sensor_off_per_min: float = 0.3  # SpO2 probe off / pulse search episodes
    lead_off_per_min: float = 0.05  # ECG leads off: no HR, no beats
    write_ecg: bool = True
    monitor_mix: Mix = (("intellivue", 1.0), ("masimo", 0.0))  # one monitor kind drawn per recording

    def __post_init__(self) -> None:
        validate_mix("VitalsOptions.monitor_mix (--monitor-mix)", self.monitor_mix, MONITORS)


@dataclass(frozen=True)
class VitalsResult:
    monitor_clock_at_zero: float  # monitor time at recording time 0 (clock offset = -this)
    first_t: float  # first row, monitor clock
    last_t: float
    ecg_start: float | None  # monitor clock
    hr_drive: np.ndarray = field(repr=False)  # (W,) the lagged pain driving the HR, mean per rated window
    numerics_t: np.ndarray = field(repr=False)  # numerics rows written, recording clock
    hr_present: np.ndarray = field(repr=False)  # ... and whether each holds an HR


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


def _mask(t: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    m = np.zeros(t.shape, dtype=bool)
    for a, b in spans:
        m |= (t >= a) & (t < b)
    return m


def simulate_beats(rng: np.random.Generator, scenario: PainScenario, start_s: float, end_s: float, *,
                   preterm: bool, lag: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Beat times (recording clock), RR intervals (s), and the driving pain response on its 10 Hz grid (grid, drive).

    The delay and time constant are drawn whether or not ``lag`` is on, so switching it changes the drive only.
    """
    dt = 0.1
    grid = np.arange(start_s - 30.0, end_s + 1.0, dt)
    # Sluggish autonomic response: seconds of delay, then a first-order lag of 8-20 s, so the HR of a
    # 10 s window still carries the pain of the previous ones (partial, lagging information).
    delay, tau = rng.uniform(*HR_DELAY_S), rng.uniform(*HR_TAU_S)
    if not lag:
        delay, tau = 0.0, NO_LAG_TAU_S
    drive = _lowpass(scenario.pain_at(grid - delay), dt, tau)
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
    return np.asarray(beats), np.asarray(rrs), grid, drive


def detected_beats(rng: np.random.Generator, beats: np.ndarray, rrs: np.ndarray,
                   artefacts: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """The R-peaks a monitor reports from a moving ECG, as (times, RR intervals in s): in artefact spans some
    beats are missed (the next interval spans both) and spurious ones are found between beats."""
    out_t, out_rr = [], []
    carry = 0.0
    for b, rr in zip(beats, rrs):
        moving = any(a <= b < e for a, e in artefacts)
        missed, extra = rng.random() < ARTEFACT_MISSED_BEAT, rng.random() < ARTEFACT_EXTRA_BEAT
        where = rng.uniform(0.4, 0.6)
        if moving and missed:
            carry += rr
            continue
        total, carry = rr + carry, 0.0
        if moving and extra and total * min(where, 1.0 - where) >= MIN_RR_S:
            out_t.append(b - (1.0 - where) * total)
            out_rr.append(where * total)
            total *= 1.0 - where
        out_t.append(b)
        out_rr.append(total)
    return np.asarray(out_t), np.asarray(out_rr)


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


def _hr_numerics(ticks: np.ndarray, beats: np.ndarray, rrs: np.ndarray, averaging_s: float) -> np.ndarray:
    """HR at each numerics tick: 60 / the median RR of the beats in the last ``averaging_s`` (NaN without any);
    the median, as a monitor's HR algorithm rejects a missed or spurious beat."""
    hr = np.full(ticks.shape, np.nan)
    for i, tk in enumerate(ticks):
        recent = rrs[(beats > tk - averaging_s) & (beats <= tk)]
        if recent.size:
            hr[i] = np.round(60.0 / np.median(recent))
    return hr


def _apply_artefacts(rng: np.random.Generator, ticks: np.ndarray, spo2: np.ndarray, hr: np.ndarray,
                     artefacts: Sequence[tuple[float, float]], *, pleth_rate: bool) -> None:
    """Motion artefact in the numerics, in place: a false SpO2 dip with jitter (or pulse search: blank) during
    each span; on a pleth-derived pulse rate, an erratic jump too."""
    for a, b in artefacts:
        inside = (ticks >= a) & (ticks < b)
        dip, jump = rng.uniform(*ARTEFACT_DIP_PCT), rng.choice((-1.0, 1.0)) * rng.uniform(*ARTEFACT_PR_BPM)
        k = int(inside.sum())
        jitter_s, jitter_h, search = rng.normal(0.0, 2.0, k), rng.normal(0.0, 8.0, k), rng.random(k) < 0.2
        spo2[inside] = np.where(search, np.nan, np.clip(np.round(spo2[inside] - dip + jitter_s), 50, 100))
        if pleth_rate:
            hr[inside] = np.where(search, np.nan, np.clip(np.round(hr[inside] + jump + jitter_h), 40, 260))


def render_vitals(directory: Path, rng: np.random.Generator, scenario: PainScenario, *, preterm: bool,
                  start_s: float, duration_s: float, options: VitalsOptions, monitor: str = MONITORS[0],
                  lag: bool = True, artefacts: Sequence[tuple[float, float]] = (),
                  artefact_rng: np.random.Generator | None = None,
                  dropouts: Sequence[tuple[float, float]] = ()) -> VitalsResult:
    """Write vitals.csv (and ecg.npy) for recording time [start_s, start_s + duration_s) on a monitor clock.

    ``rng`` feeds four independent sub-streams (beats, gaps, SpO2, ECG), so a switch (lag, monitor kind) changes
    what it is about and nothing else; ``artefact_rng`` draws the motion artefacts in ``artefacts``.
    ``dropouts``: spans in which the monitor sends nothing.
    """
    if monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {MONITORS}, got {monitor!r}")
    if artefacts and artefact_rng is None:
        raise ValueError("render_vitals: motion artefacts need their own artefact_rng")
    end_s = start_s + duration_s
    m0 = float(np.round(rng.uniform(1000.0, 80000.0), 3))  # monitor uptime at recording time 0
    r_beats, r_gaps, r_spo2, r_ecg = rng.spawn(4)
    beats, rrs, grid, drive = simulate_beats(r_beats, scenario, start_s, end_s, preterm=preterm, lag=lag)
    lead_off = _spans(r_gaps, start_s, duration_s, options.lead_off_per_min, 3.0, 10.0)
    sensor_off = _spans(r_gaps, start_s, duration_s, options.sensor_off_per_min, 3.0, 20.0)
    ecg_monitor = monitor == "intellivue"
    if not ecg_monitor:
        lead_off = []  # no ECG leads on a pulse oximeter

    # The beats the monitor reports: none while leads are off or the link is down; a moving ECG misses some.
    keep = ~_mask(beats, lead_off) & ~_mask(beats, dropouts)
    if ecg_monitor and artefacts:
        beat_t, beat_rr = detected_beats(artefact_rng, beats[keep], rrs[keep], artefacts)  # type: ignore[arg-type]
    else:
        beat_t, beat_rr = beats[keep], rrs[keep]
    shown = beat_t >= start_s

    # 1 Hz numerics on the monitor's own second ticks; none at all while the link is down.
    ticks = np.arange(np.ceil(start_s + m0), end_s + m0, 1.0) - m0
    ticks = ticks[~_mask(ticks, dropouts)]
    if ecg_monitor:
        hr = _hr_numerics(ticks, beat_t, beat_rr, HR_AVERAGING_S[monitor])
        hr[_mask(ticks, lead_off)] = np.nan
    else:  # pulse rate from the pleth pulses (the true beats), lost with the probe
        hr = _hr_numerics(ticks, beats, rrs, HR_AVERAGING_S[monitor])
    sat_base = r_spo2.uniform(91.0, 95.0) if preterm else r_spo2.uniform(96.0, 99.5)
    dip = r_spo2.uniform(0.0, 8.0)
    delay, tau = r_spo2.uniform(*SPO2_DELAY_S), r_spo2.uniform(*SPO2_TAU_S)
    if not lag:
        delay, tau = 0.0, NO_LAG_TAU_S
    sat_drive = _lowpass(scenario.pain_at(ticks - delay), 1.0, tau)
    spo2 = np.clip(np.round(sat_base - dip * sat_drive + r_spo2.normal(0, 0.6, ticks.size)), 70, 100)
    if artefacts:
        _apply_artefacts(artefact_rng, ticks, spo2, hr, artefacts, pleth_rate=not ecg_monitor)  # type: ignore[arg-type]
    probe_off = _mask(ticks, sensor_off)
    spo2[probe_off] = np.nan
    if not ecg_monitor:
        hr[probe_off] = np.nan

    rows = [(tk + m0, h, s, np.nan) for tk, h, s in zip(ticks, hr, spo2)]
    if ecg_monitor:
        rows += [(b + m0, np.nan, np.nan, rr * 1000.0) for b, rr in zip(beat_t[shown], beat_rr[shown])]
    rows.sort(key=lambda r: r[0])

    def cell(v: float, fmt: str) -> str:
        return "" if np.isnan(v) else format(v, fmt)

    with (Path(directory) / "vitals.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["t_s", "hr_bpm", "spo2_pct", "rr_ms"])
        for t, h, s, rr in rows:
            w.writerow([f"{t:.3f}", cell(h, ".0f"), cell(s, ".0f"), cell(rr, ".1f")])

    ecg_start = None
    if options.write_ecg and ecg_monitor:
        n = int(duration_s * ECG_RATE_HZ)
        ecg = ecg_from_beats(r_ecg, beats, start_s, n, lead_off)
        t = start_s + np.arange(n) / ECG_RATE_HZ
        if artefacts:  # limb movement on the electrodes: baseline swings and muscle noise
            moving = _mask(t, artefacts)
            k = int(moving.sum())
            swing = 0.4 * np.sin(2 * np.pi * artefact_rng.uniform(1.0, 3.0) * t[moving])  # type: ignore[union-attr]
            ecg[moving] += (swing + artefact_rng.normal(0.0, 0.1, k)).astype(np.float32)  # type: ignore[union-attr]
        ecg[_mask(t, dropouts)] = 0.0  # nothing recorded
        np.save(Path(directory) / "ecg.npy", ecg)
        ecg_start = start_s + m0

    win = (grid >= 0) & (grid < scenario.n_windows * scenario.window_s)
    idx = scenario.window_index(grid[win])
    hr_drive = np.bincount(idx, weights=drive[win], minlength=scenario.n_windows) / np.maximum(
        np.bincount(idx, minlength=scenario.n_windows), 1)
    return VitalsResult(m0, rows[0][0], rows[-1][0], ecg_start, hr_drive, ticks, np.isfinite(hr))
