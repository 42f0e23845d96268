"""Windows from a dataset: count, shapes, clock alignment, labels, presence, cache, and pain signal."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from models.data.layout import read_dataset
from models.data.loader import load_recording_windows, load_windows, sample_frame_indices
from models.features.cry import detect_cry
from models.data.synth_audio import synth_phonation


def test_window_count_and_shapes(cohort: Path, windows) -> None:
    ds = read_dataset(cohort)
    assert len(windows) == sum(len(r.windows) for r in ds.recordings) == 24
    for w in windows:
        assert w.frames.shape == (16, 64, 64, 3) and w.frames.dtype == np.uint8
        assert np.all((w.frame_times_s >= w.start_s) & (w.frame_times_s < w.end_s))
        assert w.frame_times_s[-1] > w.end_s - 1.0 / 8.0 - 1e-9  # last frame = last frame in the window
        assert np.all(np.diff(w.frame_times_s) >= 0)
        assert w.audio.dtype == np.float32 and w.audio.ndim == 1
        assert w.audio.size == round((w.end_s - w.start_s) * w.audio_rate)
        assert np.abs(w.audio).max() <= 1.0
        v = w.vitals
        assert v.start_s == pytest.approx(w.end_s - 30.0)
        assert np.all((v.t_s > 0) & (v.t_s <= 30.0)) and np.all((v.beat_t_s > 0) & (v.beat_t_s <= 30.0))
        assert v.hr_bpm.shape == v.spo2_pct.shape == v.t_s.shape and v.rr_ms.shape == v.beat_t_s.shape
        assert v.ecg is not None and v.ecg.shape == (7500,)
        assert w.presence.video and w.presence.audio


def test_labels_are_rater_means(cohort: Path, windows) -> None:
    ds = read_dataset(cohort)
    rated = [rw for rec in ds.recordings for rw in rec.windows]
    for w, rw in zip(windows, rated):
        assert (w.start_s, w.end_s) == (rw.start_s, rw.end_s)
        assert w.label.total == pytest.approx(np.mean([r.total for r in rw.ratings]))
        assert w.label.total == pytest.approx(sum(w.label.items.values()))
        assert set(w.label.rater_totals) == {"R1", "R2"}
        assert 0.0 <= w.label.intensity <= 10.0
        assert w.label.intensity == pytest.approx(w.label.total * 10 / 7)


def test_rr_intervals_agree_with_beat_times(windows) -> None:
    """The RR column is the gap between consecutive beats: checks the vitals clock handling end to end."""
    for w in windows[1:4]:
        b, rr = w.vitals.beat_t_s, w.vitals.rr_ms
        gaps = np.diff(b) * 1000.0
        ok = np.abs(gaps - rr[1:]) < 2.0
        assert ok.mean() > 0.9  # leads-off gaps excepted
        assert 60_000 / np.median(rr) == pytest.approx(np.nanmedian(w.vitals.hr_bpm), rel=0.1)


def test_audio_clock_offset_is_applied(one_recording: Path) -> None:
    rec = read_dataset(one_recording).recordings[0]
    before = load_recording_windows(rec)
    meta_path = rec.directory / "recording.json"
    meta = json.loads(meta_path.read_text())
    meta["clock_offsets_s"]["audio"] += 1.0  # the sound card started one second later
    meta_path.write_text(json.dumps(meta))
    after = load_recording_windows(read_dataset(one_recording).recordings[0])
    rate = before[2].audio_rate
    np.testing.assert_array_equal(after[2].audio[rate:], before[2].audio[:-rate])
    np.testing.assert_array_equal(after[2].frames, before[2].frames)


def test_cache_roundtrip_and_invalidation(one_recording: Path, tmp_path: Path) -> None:
    rec = read_dataset(one_recording).recordings[0]
    cache = tmp_path / "cache"
    first = load_recording_windows(rec, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1
    again = load_recording_windows(rec, cache_dir=cache)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.audio, b.audio)
        np.testing.assert_array_equal(a.vitals.hr_bpm, b.vitals.hr_bpm)
        np.testing.assert_array_equal(a.vitals.ecg, b.vitals.ecg)
        assert a.presence == b.presence and a.label == b.label
    vitals = rec.directory / "vitals.csv"
    st = vitals.stat()
    os.utime(vitals, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_recording_windows(rec, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2, "an edited recording must be decoded again"


def test_vitals_invalid_when_hr_missing(one_recording: Path) -> None:
    path = one_recording / "S001/R01/vitals.csv"
    lines = path.read_text().splitlines()
    out = [lines[0]] + [",".join([c[0], "", *c[2:]]) for c in (ln.split(",") for ln in lines[1:])]
    path.write_text("\n".join(out) + "\n")
    ws = load_windows(one_recording)
    assert not any(w.presence.vitals_valid for w in ws)
    assert all(np.isnan(w.vitals.hr_bpm).all() for w in ws)


def test_face_visibility_follows_face_csv(one_recording: Path) -> None:
    path = one_recording / "S001/R01/face.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + [ln.split(",")[0] + ",0" for ln in lines[1:]]) + "\n")
    ws = load_windows(one_recording)
    assert not any(w.presence.face_visible for w in ws) and all(w.presence.video for w in ws)
    assert not any(w.presence.mask()["video"] for w in ws)


def test_sample_frame_indices_edges() -> None:
    t = np.arange(100) / 10.0
    idx = sample_frame_indices(t, 2.0, 4.0, 16)
    assert idx.size == 16 and idx[0] == 20 and idx[-1] == 39
    few = sample_frame_indices(t, 2.0, 2.35, 16)  # 4 frames for 16 slots: repeats, in order
    assert set(few.tolist()) == {20, 21, 22, 23} and np.all(np.diff(few) >= 0)
    assert sample_frame_indices(t, 20.0, 30.0, 16).size == 0


def test_detect_cry_accepts_cry_rejects_alarm_and_noise() -> None:
    rate = 16000
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, rate)
    cry = noise.copy()
    cry[4000:12000] += synth_phonation(rng, 8000, rate, level=2)
    whimper = noise.copy()
    whimper[4000:10000] += synth_phonation(rng, 6000, rate, level=1)
    alarm = noise + 0.2 * np.sin(2 * np.pi * 960.0 * np.arange(rate) / rate)
    # The loader calls a window a cry by the device's own detector: the synthetic vigorous cry and
    # whimper are found, a 960 Hz alarm and the noise floor are not.
    assert detect_cry(cry, rate)
    assert detect_cry(whimper, rate)
    assert not detect_cry(alarm, rate)
    assert not detect_cry(noise, rate)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def test_pain_signal_present_in_each_modality(windows) -> None:
    """Rated NIPS correlates with HR, cry energy and mouth darkness, each on its own (24 windows)."""
    y = np.array([w.label.total for w in windows])
    assert y.std() > 1.0
    subj = np.array([w.subject.subject_id for w in windows])
    hr = np.array([np.nanmean(w.vitals.hr_bpm[w.vitals.t_s > 20.0]) if np.isfinite(w.vitals.hr_bpm[
        w.vitals.t_s > 20.0]).any() else np.nan for w in windows])
    for s in np.unique(subj):  # infants differ in baseline HR (preterm higher): compare within infant
        hr[subj == s] -= np.nanmean(hr[subj == s])
    cry_energy = np.array([np.log(np.sqrt(np.mean(w.audio.astype(np.float64) ** 2))) for w in windows])
    size = windows[0].frames.shape[1]
    r0, r1, c0, c1 = int(0.62 * size), int(0.82 * size), int(0.38 * size), int(0.62 * size)
    mouth_dark = np.array([255.0 - w.frames[:, r0:r1, c0:c1].mean() for w in windows])
    assert _corr(y, hr) > 0.1
    assert _corr(y, cry_energy) > 0.3
    assert _corr(y, mouth_dark) > 0.3
