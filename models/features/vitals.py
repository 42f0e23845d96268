"""Vitals pre-processing: the 30 s grid the vitals encoder reads and the short-term HRV features.

Why here and not in the appliance: training (synthetic cohort, recorded sessions) and the device must
turn the same RR intervals and SpO2 readings into the same tensors, so this is the one place that
does it.

Conventions (all documented because a silent change would shift what the model sees):

* Times are seconds on one monotonic clock (the appliance stamps every sample on arrival).
* An RR interval is stamped at the R peak that *closes* it (the moment it becomes known).
* The grid has ``cfg.samples`` points at ``cfg.grid_hz``; the last point lies exactly at ``end_s``
  (the newest moment of the window): ``t_k = end_s - (samples - 1 - k) / grid_hz``.
* Instantaneous HR = 60000 / RR (bpm) placed at beat times and linearly interpolated
  (``np.interp``) on the grid; SpO2 likewise. Beyond the first/last valid sample ``np.interp``
  holds the edge value (sample-and-hold).
* A grid point is valid when the valid samples around it are at most ``max_gap_s`` (2 s) apart;
  before the first / after the last valid sample, when that sample is at most ``max_gap_s`` away.
  Where a point is invalid its value channel is set to 0 *after* normalisation, i.e. the population
  centre, and the validity channel says 0, so the network never sees a stale or fabricated value as
  if it were measured.
* Normalisation: HR ``(hr - 140) / 30`` (neonatal HR is ~100-180 bpm, so this maps the normal range
  to about [-1.3, 1.3]); SpO2 ``(spo2 - 95) / 5`` (targets 90-100 % map to [-1, 1]).
* Channel order: HR, HR valid, SpO2, SpO2 valid (``VitalsConfig.in_channels == 4``).

HRV (30 s windows allow mean HR, RMSSD and SDNN; LF/HF would need 64-120 s): intervals outside
250-1500 ms (neonatal physiology) are rejected, then an interval differing by more than 20 % from the
last accepted one is rejected as ectopic/artefact (the first reference is the median of the
in-range intervals so that an artefact at the start cannot poison the rest). RMSSD uses only pairs
of accepted intervals that are adjacent in the original sequence (a difference across a rejected
beat is not a beat-to-beat difference). SDNN uses ``ddof=1``. Mean HR = 60000 / mean(RR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from models.configs import VitalsConfig

HR_CENTER_BPM = 140.0
HR_SCALE_BPM = 30.0
SPO2_CENTER_PCT = 95.0
SPO2_SCALE_PCT = 5.0
MAX_GAP_S = 2.0

RR_MIN_MS = 250.0
RR_MAX_MS = 1500.0
MAX_SUCCESSIVE_CHANGE = 0.20
SPO2_MIN_PCT = 50.0  # below this pulse oximeters are not calibrated: treat as invalid
SPO2_MAX_PCT = 100.0

# HRV measures are right-skewed (log-normal-ish): the network gets ln(1 + x ms), centred on ln(21)
# (a typical neonatal RMSSD/SDNN of ~20 ms) with unit scale.
HRV_LOG_CENTER = math.log(21.0)
HRV_LOG_SCALE = 1.0

CHANNELS = ("hr", "hr_valid", "spo2", "spo2_valid")


def _as_1d(name: str, values: object) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _validity(name: str, valid: object | None, length: int) -> np.ndarray:
    if valid is None:
        return np.ones(length, dtype=bool)
    mask = np.asarray(valid)
    if mask.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {mask.shape}")
    return mask.astype(bool)


def _check_times(name: str, times: np.ndarray) -> None:
    if not np.all(np.isfinite(times)):
        raise ValueError(f"{name} contains non-finite times")
    if times.size > 1 and np.any(np.diff(times) <= 0):
        index = int(np.argmax(np.diff(times) <= 0)) + 1
        raise ValueError(f"{name} must be strictly increasing; element {index} is not after element {index - 1}")


def grid_times(end_s: float, cfg: VitalsConfig) -> np.ndarray:
    """Times of the grid points of the window ending at ``end_s`` (last point exactly at ``end_s``)."""
    if not math.isfinite(end_s):
        raise ValueError(f"end_s must be finite, got {end_s}")
    if cfg.grid_hz <= 0:
        raise ValueError(f"VitalsConfig.grid_hz must be positive, got {cfg.grid_hz}")
    k = np.arange(cfg.samples, dtype=np.float64)
    return end_s - (cfg.samples - 1 - k) / cfg.grid_hz


def resample_on_grid(
    times: np.ndarray, values: np.ndarray, grid: np.ndarray, max_gap_s: float = MAX_GAP_S
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of valid samples on ``grid`` and a validity mask by the gap rule.

    ``times``/``values`` must already be restricted to valid samples and sorted. Returns
    ``(values_on_grid, valid_on_grid)``; with no samples everything is invalid (values 0).
    """
    if times.size == 0:
        return np.zeros_like(grid), np.zeros(grid.shape, dtype=bool)
    interpolated = np.interp(grid, times, values)
    after = np.searchsorted(times, grid, side="left")  # first sample at or after each grid point
    before = after - 1
    has_before = before >= 0
    has_after = after < times.size
    t_before = np.where(has_before, times[np.clip(before, 0, times.size - 1)], -np.inf)
    t_after = np.where(has_after, times[np.clip(after, 0, times.size - 1)], np.inf)
    exact = has_after & (t_after == grid)
    interior = has_before & has_after & (t_after - t_before <= max_gap_s)
    held_tail = has_before & ~has_after & (grid - t_before <= max_gap_s)
    held_head = ~has_before & has_after & (t_after - grid <= max_gap_s)
    valid = exact | interior | held_tail | held_head
    return interpolated, valid


def build_vitals_grid(
    rr_ms: object,
    rr_times_s: object,
    spo2_pct: object,
    spo2_times_s: object,
    end_s: float,
    cfg: VitalsConfig,
    rr_valid: object | None = None,
    spo2_valid: object | None = None,
    max_gap_s: float = MAX_GAP_S,
) -> np.ndarray:
    """The encoder input for the window ending at ``end_s``: float32 ``(4, cfg.samples)``.

    Samples outside the window may be passed (and help: a beat just before the window start lets
    the first grid points interpolate instead of hold). RR intervals rejected as artefacts (see the
    module docstring) and samples flagged invalid or non-finite do not enter the HR/SpO2 channels.
    """
    if cfg.in_channels != len(CHANNELS):
        raise ValueError(f"VitalsConfig.in_channels must be {len(CHANNELS)} ({', '.join(CHANNELS)}), got {cfg.in_channels}")
    rr = _as_1d("rr_ms", rr_ms)
    rr_t = _as_1d("rr_times_s", rr_times_s)
    if rr.shape != rr_t.shape:
        raise ValueError(f"rr_ms has {rr.size} values but rr_times_s has {rr_t.size}")
    spo2 = _as_1d("spo2_pct", spo2_pct)
    spo2_t = _as_1d("spo2_times_s", spo2_times_s)
    if spo2.shape != spo2_t.shape:
        raise ValueError(f"spo2_pct has {spo2.size} values but spo2_times_s has {spo2_t.size}")
    _check_times("rr_times_s", rr_t)
    _check_times("spo2_times_s", spo2_t)
    if max_gap_s <= 0:
        raise ValueError(f"max_gap_s must be positive, got {max_gap_s}")

    grid = grid_times(end_s, cfg)

    rr_ok = _validity("rr_valid", rr_valid, rr.size) & reject_artifacts(rr)
    hr, hr_ok = resample_on_grid(rr_t[rr_ok], 60000.0 / rr[rr_ok], grid, max_gap_s)

    spo2_ok = _validity("spo2_valid", spo2_valid, spo2.size) & np.isfinite(spo2)
    spo2_ok &= (spo2 >= SPO2_MIN_PCT) & (spo2 <= SPO2_MAX_PCT)
    sat, sat_ok = resample_on_grid(spo2_t[spo2_ok], spo2[spo2_ok], grid, max_gap_s)

    out = np.empty((4, grid.size), dtype=np.float32)
    out[0] = np.where(hr_ok, (hr - HR_CENTER_BPM) / HR_SCALE_BPM, 0.0)
    out[1] = hr_ok
    out[2] = np.where(sat_ok, (sat - SPO2_CENTER_PCT) / SPO2_SCALE_PCT, 0.0)
    out[3] = sat_ok
    return out


def reject_artifacts(rr_ms: object) -> np.ndarray:
    """Boolean mask of RR intervals accepted for HR and HRV (range, then the 20 % successive rule)."""
    rr = _as_1d("rr_ms", rr_ms)
    accepted = np.isfinite(rr) & (rr >= RR_MIN_MS) & (rr <= RR_MAX_MS)
    if not accepted.any():
        return accepted
    reference = float(np.median(rr[accepted]))
    for i in np.flatnonzero(accepted):
        if abs(rr[i] - reference) > MAX_SUCCESSIVE_CHANGE * reference:
            accepted[i] = False
        else:
            reference = float(rr[i])
    return accepted


@dataclass(frozen=True)
class HrvFeatures:
    """Short-term HRV of one window, in physical units (NaN where too few beats were accepted)."""

    mean_hr_bpm: float
    rmssd_ms: float
    sdnn_ms: float
    accepted: int
    rejected: int

    @property
    def complete(self) -> bool:
        return all(math.isfinite(v) for v in (self.mean_hr_bpm, self.rmssd_ms, self.sdnn_ms))

    def normalised(self) -> np.ndarray:
        """float32 ``(3,)`` network input (mean HR, RMSSD, SDNN); 0 (the centre) for a missing value.

        Mean HR uses the grid's HR normalisation; RMSSD and SDNN ``(ln(1 + ms) - ln 21) / 1``.
        """
        values = (
            (self.mean_hr_bpm - HR_CENTER_BPM) / HR_SCALE_BPM,
            (math.log1p(self.rmssd_ms) - HRV_LOG_CENTER) / HRV_LOG_SCALE if math.isfinite(self.rmssd_ms) else math.nan,
            (math.log1p(self.sdnn_ms) - HRV_LOG_CENTER) / HRV_LOG_SCALE if math.isfinite(self.sdnn_ms) else math.nan,
        )
        return np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)


def hrv_features(rr_ms: object, rr_valid: object | None = None) -> HrvFeatures:
    """Mean HR, RMSSD and SDNN of the RR intervals of one window after artefact rejection.

    Needs at least 1 accepted interval for mean HR, 2 for SDNN and one adjacent accepted pair for
    RMSSD; a measure that cannot be computed is NaN (``HrvFeatures.complete`` is False) rather
    than an error, because a window with few clean beats is ordinary at the bedside.
    """
    rr = _as_1d("rr_ms", rr_ms)
    accepted = _validity("rr_valid", rr_valid, rr.size) & reject_artifacts(rr)
    clean = rr[accepted]
    mean_hr = 60000.0 / float(clean.mean()) if clean.size >= 1 else math.nan
    sdnn = float(np.std(clean, ddof=1)) if clean.size >= 2 else math.nan
    pairs = accepted[1:] & accepted[:-1]
    if pairs.any():
        diffs = np.diff(rr)[pairs]
        rmssd = float(np.sqrt(np.mean(diffs**2)))
    else:
        rmssd = math.nan
    return HrvFeatures(mean_hr, rmssd, sdnn, int(accepted.sum()), int(rr.size - accepted.sum()))
