"""R-peak detection on synthetic neonatal ECG with known beat times."""

import numpy as np
import pytest

from appliance.devtools.monitor_emulator import synthetic_ecg
from appliance.sources.monitor.rpeaks import StreamingRPeakDetector, detect_rpeaks, rr_intervals_ms


def _record(fs, n_beats=120, seed=0, noise=0.03, wander=0.3):
    rng = np.random.default_rng(seed)
    # neonatal RR ~330-500 ms with respiratory-like modulation and beat-to-beat variability
    rr = 0.42 + 0.04 * np.sin(np.arange(n_beats) / 4.0) + rng.normal(0, 0.012, n_beats)
    beats = 0.6 + np.concatenate(([0.0], np.cumsum(rr[:-1])))
    t = np.arange(int((beats[-1] + 0.6) * fs)) / fs
    ecg = synthetic_ecg(beats, rr, t) + rng.normal(0, noise, len(t)) + wander * np.sin(2 * np.pi * 0.4 * t)
    return ecg, beats


@pytest.mark.parametrize("fs", [250.0, 500.0])
def test_detects_every_beat_with_rr_error_under_4ms(fs):
    ecg, beats = _record(fs)
    peaks = detect_rpeaks(ecg, fs)
    assert len(peaks) == len(beats)
    assert np.max(np.abs(peaks / fs - beats)) < 0.010
    rr_err = np.abs(rr_intervals_ms(peaks, fs) - np.diff(beats) * 1000)
    assert rr_err.mean() < 4.0 and rr_err.max() < 10.0


def test_no_beats_in_flat_or_short_signal():
    assert len(detect_rpeaks(np.zeros(5000), 500.0)) == 0
    assert len(detect_rpeaks(np.ones(100), 500.0)) == 0
    assert len(detect_rpeaks(np.full(1000, np.nan), 500.0)) == 0


def test_refractory_period_holds_at_high_rates():
    fs = 500.0
    rr = np.full(60, 60.0 / 260)  # 260 /min neonatal SVT: RR 231 ms, above the 200 ms refractory
    beats = 0.5 + np.arange(60) * rr[0]
    t = np.arange(int((beats[-1] + 0.5) * fs)) / fs
    peaks = detect_rpeaks(synthetic_ecg(beats, rr, t), fs)
    assert len(peaks) == len(beats)
    assert np.all(np.diff(peaks) / fs >= 0.2)


def test_streaming_detector_emits_each_beat_once():
    fs = 500.0
    ecg, beats = _record(fs, n_beats=80, seed=3)
    det = StreamingRPeakDetector(fs)
    times, rrs = [], []
    chunk = 128  # 256 ms, like an IntelliVue wave poll
    for i in range(0, len(ecg), chunk):
        part = ecg[i : i + chunk]
        t, rr = det.feed(part, int((i + len(part)) / fs * 1e9))
        times += list(t)
        rrs += list(rr)
    times = np.asarray(times) / 1e9
    assert np.isnan(rrs[0]) and not np.any(np.isnan(rrs[1:]))
    # all but the learning phase and the lag at the end are found, each exactly once
    matched = [np.min(np.abs(beats - x)) for x in times]
    assert max(matched) < 0.010
    assert len(set(np.round(times, 2))) == len(times)
    assert len(times) >= len(beats) - 6
    first = int(np.argmin(np.abs(beats - times[0])))
    true_rr = np.diff(beats[first : first + len(times)]) * 1000
    assert np.mean(np.abs(np.asarray(rrs[1:]) - true_rr)) < 4.0
