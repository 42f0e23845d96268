"""The cross-modal confounders of the synthetic cohort do what they say, read back from the files they write.

Each test reads what a model or a reviewer would: the video decoded by OpenCV, the audio through the device's
own cry detector, vitals.csv and the loader's validity flag, truth.csv's ``confounder_*`` marks. Where a cause
must be isolated, a twin cohort with the same seed and that one confounder off is the control: every other draw
is the same (each confounder has its own random stream), so the difference between the twins is the confounder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from models.data.layout import load_audio, read_dataset, read_vitals
from models.data.loader import VITALS_WINDOW_S, load_windows
from models.data.synth import SynthOptions, synth_cohort
from models.data.synth_confounders import (CONFOUNDER_COLUMNS, LAG, MONITOR_DROPOUT, MOTION_ARTEFACT, NEIGHBOUR_CRY,
                                           SILENT_CRY)
from models.data.synth_video import VideoOptions
from models.features.cry import CryConfig, detect_cry
from tests.models.data.synth_probes import face_visible, gray_frames, in_spans, meta, mouth_openness, truth_rows

# One term infant, not intubated, light skin (the mouth's dark opening stands out), 64 px at 10 fps. Neighbour
# cries and dropouts far more often than by default, so one minute holds them.
BAY = SynthOptions(minutes=1.0, intubated_probability=0.0, preterm_fraction=0.0, skin_tone_mix=(("I-II", 1.0),),
                   video=VideoOptions(size=64, fps=10.0))
BAY = replace(BAY, confounders=replace(BAY.confounders, neighbour_cries_per_min=4.0, monitor_dropouts_per_min=1.5))
SINGLE_ROOM = replace(BAY, confounders=replace(BAY.confounders, neighbour_cries_per_min=0.0,
                                               monitor_dropouts_per_min=0.0))
SEED = 0


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The open bay and its single-room twin (no neighbour, no dropout), same seed: their recording folders."""
    out = {}
    for name, options in (("bay", BAY), ("single", SINGLE_ROOM)):
        root = synth_cohort(tmp_path_factory.mktemp(name), 1, seed=SEED, options=options, progress=False).root
        out[name] = root / "S001" / "R01"
    return out


@pytest.fixture(scope="module")
def twin_windows(twins: dict[str, Path]) -> dict[str, list]:
    """The twins' windows as the loader gives them (presence flags by the device's own rules)."""
    return {name: load_windows(rec.parent.parent) for name, rec in twins.items()}


def test_truth_marks_every_confounder_column(twins: dict[str, Path]) -> None:
    header = (twins["bay"] / "truth.csv").read_text().splitlines()[0].split(",")
    assert header[-len(CONFOUNDER_COLUMNS):] == list(CONFOUNDER_COLUMNS)
    rows = truth_rows(twins["bay"])
    assert all(r[c] in (0.0, 1.0) for r in rows for c in CONFOUNDER_COLUMNS)
    assert all(r[SILENT_CRY] == 0 for r in rows)  # not intubated
    assert sum(r[NEIGHBOUR_CRY] for r in rows) >= 2 and sum(r[MOTION_ARTEFACT] for r in rows) >= 1
    assert sum(r[LAG] for r in rows) >= 1 and sum(r[MONITOR_DROPOUT] for r in rows) >= 1
    assert all(r[NEIGHBOUR_CRY] == r[MONITOR_DROPOUT] == 0 for r in truth_rows(twins["single"]))


def test_neighbour_cry_is_heard_but_not_seen_nor_rated(twins: dict[str, Path], twin_windows: dict[str, list]) -> None:
    """Another infant's cry: the device's cry detector finds it in the windows truth.csv marks, where this infant
    does not cry (its single-room twin has no cry there); this infant's face does not move with it (the video is
    the twin's, byte for byte, and the mouth stays shut during the neighbour's bursts while it opens in this
    infant's own cries); the raters do not count it (ratings.csv is the twin's)."""
    bay, single = twins["bay"], twins["single"]
    rows = truth_rows(bay)
    heard = [i for i, r in enumerate(rows) if r[NEIGHBOUR_CRY] and r["cry"] == 0]
    own = [i for i, r in enumerate(rows) if r["cry"] >= 1]
    assert heard and own, (heard, own)
    w_bay, w_single = twin_windows["bay"], twin_windows["single"]
    assert all(w_bay[i].presence.cry_detected for i in heard)
    assert not any(w_single[i].presence.cry_detected for i in heard)

    assert (bay / "video.mp4").read_bytes() == (single / "video.mp4").read_bytes()
    assert (bay / "ratings.csv").read_bytes() == (single / "ratings.csv").read_bytes()
    # The audio differs from the twin's exactly where the neighbour cries (spans rounded to 10 ms in
    # recording.json, plus the low-pass filter's short ring).
    a_bay, rate = load_audio(bay / "audio.wav")
    a_single, _ = load_audio(single / "audio.wav")
    t_audio = meta(bay)["clock_offsets_s"]["audio"] + np.arange(a_bay.size) / rate
    bursts = meta(bay)["synthetic_events"]["neighbour_cries"]
    differs = np.abs(a_bay - a_single) > 1e-3
    near = in_spans(t_audio, [[a - 0.01, b + 0.05] for a, b in bursts])
    assert differs[near].mean() > 0.5 and not differs[~near].any()

    frames, t = gray_frames(bay)
    openness = mouth_openness(frames)
    visible = face_visible(bay, t)
    window = np.floor(t / BAY.window_s).astype(int)
    in_neighbour = in_spans(t, bursts) & np.isin(window, heard) & visible
    in_own = np.isin(window, own) & visible
    assert in_neighbour.sum() >= 10 and in_own.sum() >= 10
    assert openness[in_own].mean() > 0.05, openness[in_own].mean()
    assert openness[in_neighbour].mean() < 0.2 * openness[in_own].mean()
    quiet = np.isin(window, heard) & ~in_spans(t, bursts) & visible  # same windows, between the bursts
    assert abs(openness[in_neighbour].mean() - openness[quiet].mean()) < 0.01


def test_monitor_dropout_invalidates_whole_vitals_windows_mid_recording(twins: dict[str, Path],
                                                                        twin_windows: dict[str, list]) -> None:
    bay = twins["bay"]
    rows = truth_rows(bay)
    marked = [i for i, r in enumerate(rows) if r[MONITOR_DROPOUT]]
    assert marked and min(marked) >= 1, marked  # after the first window
    w_bay, w_single = twin_windows["bay"], twin_windows["single"]
    assert not any(w_bay[i].presence.vitals_valid for i in marked)
    assert all(w_single[i].presence.vitals_valid for i in marked)  # the dropout is what invalidated them
    # Nothing arrives while the link is down: a gap in vitals.csv longer than half the vitals window.
    t = read_vitals(bay / "vitals.csv").t_s + meta(bay)["clock_offsets_s"]["vitals"]
    gaps = np.diff(t)
    assert gaps.max() > VITALS_WINDOW_S / 2 and t[np.argmax(gaps)] > BAY.window_s - 1.0  # the last row before it


def _per_second(t: np.ndarray, values: np.ndarray) -> dict[int, float]:
    sec = np.floor(t).astype(int)
    return {int(k): float(np.median(values[sec == k])) for k in np.unique(sec)}


def test_motion_artefact_cooccurs_with_limb_motion_on_camera(twins: dict[str, Path]) -> None:
    """False SpO2 dips (and spurious R-R intervals) in vitals.csv happen while the camera sees the arm move at
    the bottom of the frame, and the windows holding them are the ones truth.csv marks."""
    rec = twins["single"]  # no dropouts: the whole minute of vitals
    frames, t = gray_frames(rec)
    s = frames.shape[1]
    lo = int(0.72 * s)
    diff = np.abs(np.diff(frames, axis=0))
    corners = np.concatenate([diff[:, lo:, :int(0.3 * s)], diff[:, lo:, int(0.7 * s):]], axis=2).mean(axis=(1, 2))
    motion = _per_second(t[1:], corners)
    still = np.median(list(motion.values()))

    vit = read_vitals(rec / "vitals.csv")
    vt = vit.t_s + meta(rec)["clock_offsets_s"]["vitals"]
    numeric = np.isnan(vit.rr_ms)
    st, spo2 = vt[numeric], vit.spo2_pct[numeric]
    baseline = np.array([np.nanmedian(spo2[np.abs(st - x) <= 10.0]) for x in st])
    dips = st[spo2 <= baseline - 5.0]
    assert dips.size >= 3, dips

    def moving_before(x: float, lead: float = 3.0) -> bool:  # the oximeter's averaging: a dip may trail the move
        return any(v > 2.0 * still for k, v in motion.items() if x - lead - 1 <= k <= x)

    assert np.mean([moving_before(x) for x in dips]) >= 0.9
    seconds_with_dips = {int(np.floor(x)) for x in dips}
    dip_free_motion = [v for k, v in motion.items() if all(abs(k - d) > 4 for d in seconds_with_dips)]
    assert np.mean([v > 2.0 * still for v in dip_free_motion]) < 0.3  # still seconds away from the artefacts
    rr_t, rr = vt[~numeric], vit.rr_ms[~numeric]
    odd = rr_t[np.abs(rr / np.median(rr) - 1.0) > 0.3]
    assert all(moving_before(x) for x in odd), odd  # the moving ECG's missed / spurious beats
    rows = truth_rows(rec)
    marked = {i for i, r in enumerate(rows) if r[MOTION_ARTEFACT]}
    assert {int(x // SINGLE_ROOM.window_s) for x in dips if x < len(rows) * SINGLE_ROOM.window_s} <= marked


def _hr_and_cry(options: SynthOptions, root: Path, seed: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    synth_cohort(root, 1, seed=seed, options=options, progress=False)
    rec = read_dataset(root).recordings[0]
    vit = read_vitals(rec.vitals_path)
    numeric = np.isnan(vit.rr_ms) & np.isfinite(vit.hr_bpm)
    t = vit.t_s[numeric] + rec.offset("vitals")
    audio, rate = load_audio(rec.audio.path)
    onset = float(rec.meta.extra["procedures"][0]["t_s"])
    first = max(int((onset - 5.0 - rec.offset("audio")) * rate), 0)  # the detector on the 25 s around the stimulus
    segments = detect_cry(audio[first:first + 25 * rate], rate, config=CryConfig(rate=rate))
    cries = [seg.start_ns / 1e9 + first / rate + rec.offset("audio") for seg in segments]
    return t, vit.hr_bpm[numeric], onset, min(cries)


def _half_rise_and_peak(t: np.ndarray, hr: np.ndarray, onset: float) -> tuple[float, float]:
    """Seconds from the stimulus until HR is half-way to its peak, and until the peak."""
    base = np.median(hr[(t > onset - 10.0) & (t <= onset)])
    after = t >= onset
    peak = int(np.argmax(np.where(after, hr, -np.inf)))
    half = int(np.flatnonzero(after & (hr >= base + 0.5 * (hr[peak] - base)))[0])
    return float(t[half] - onset), float(t[peak] - onset)


def test_physiological_lag_hr_follows_and_outlasts_cry_follows_grimace(tmp_path: Path) -> None:
    """The same infant with and without the lag (seed 1: a heel lance in a term infant): with it, the HR rise
    starts seconds after the stimulus and peaks later, and the cry starts a second or more later."""
    base = SynthOptions(minutes=1.0, intubated_probability=0.0, preterm_fraction=0.0,
                        video=VideoOptions(size=32, fps=4.0))
    base = replace(base, confounders=base.confounders.off())
    t_on, hr_on, onset, cry_on = _hr_and_cry(replace(base, confounders=replace(base.confounders, physiological_lag=True)),
                                             tmp_path / "lag", seed=1)
    t_off, hr_off, onset_off, cry_off = _hr_and_cry(base, tmp_path / "nolag", seed=1)
    assert onset == onset_off
    half_on, peak_on = _half_rise_and_peak(t_on, hr_on, onset)
    half_off, peak_off = _half_rise_and_peak(t_off, hr_off, onset)
    assert half_on >= 3.0 and half_on >= half_off + 3.0, (half_on, half_off)
    assert peak_on >= peak_off + 3.0, (peak_on, peak_off)
    assert cry_on >= onset + 1.0 and cry_on >= cry_off + 1.0, (onset, cry_on, cry_off)
    rows = truth_rows(tmp_path / "lag" / "S001" / "R01")
    assert any(r[LAG] for r in rows) and not any(r[LAG] for r in truth_rows(tmp_path / "nolag" / "S001" / "R01"))
