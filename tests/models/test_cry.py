"""Cry detector on synthetic audio: a harmonic 450 Hz cry with bursts is found; silence, white noise and a
1 kHz alarm tone are not; streaming in periods gives the same segments on the monotonic clock."""
from __future__ import annotations

import numpy as np
import pytest

from models.features.cry import CryConfig, CryDetector, analyze_frames, detect_cry
from appliance.sources.microphone import AudioPeriod

SR = 16000


def synthetic_cry(dur: float = 6.0, start: float = 1.0, stop: float = 5.0, f0: float = 450.0, burst: float = 0.8,
                  gap: float = 0.3, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """Harmonic tone (5 partials, 5 Hz vibrato) switched on in bursts between start and stop, plus faint noise."""
    t = np.arange(int(dur * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))) / SR
    x = sum(0.6 ** k * np.sin((k + 1) * phase) for k in range(5))
    x = amp * x / np.abs(x).max()
    on = ((t >= start) & (t < stop) & (((t - start) % (burst + gap)) < burst)).astype(float)
    env = np.convolve(on, np.hanning(160) / np.hanning(160).sum(), "same")
    return (x * env + np.random.default_rng(seed).normal(0, 0.001, t.size)).astype(np.float32)


def test_bursty_cry_is_one_segment_with_its_pitch() -> None:
    segs = detect_cry(synthetic_cry(), SR)
    assert len(segs) == 1
    s = segs[0]
    assert s.start_ns / 1e9 == pytest.approx(1.0, abs=0.06)
    assert s.end_ns / 1e9 == pytest.approx(5.0, abs=0.06)  # the 0.3 s inspiratory gaps are bridged
    assert s.median_f0_hz == pytest.approx(450, rel=0.03)
    assert -25 < s.peak_dbfs < -5


@pytest.mark.parametrize("name", ["silence", "white noise", "1 kHz alarm"])
def test_non_cry_sounds_give_no_segment(name: str) -> None:
    t = np.arange(6 * SR) / SR
    x = {"silence": np.zeros(t.size),
         "white noise": np.random.default_rng(1).normal(0, 0.1, t.size),
         "1 kHz alarm": 0.3 * np.sin(2 * np.pi * 1000 * t)}[name].astype(np.float32)
    assert detect_cry(x, SR) == []


def test_alarm_is_periodic_but_out_of_band() -> None:
    t = np.arange(4 * 512) / SR
    f = analyze_frames((0.3 * np.sin(2 * np.pi * 1000 * t)).reshape(4, 512).astype(np.float32), CryConfig())
    # YIN finds the true 1 kHz period, not its 500 Hz (2x period) alias inside the cry band
    assert np.allclose(f.f0_hz, 1000, rtol=0.01) and (f.aperiodicity < 0.05).all()


def test_long_pause_splits_cry_bouts_and_quiet_cry_is_ignored() -> None:
    x = np.concatenate([synthetic_cry(3.0, 0.5, 2.0), synthetic_cry(3.0, 0.5, 2.0, seed=2)])
    segs = detect_cry(x, SR)
    assert [round(s.start_ns / 1e9, 1) for s in segs] == [0.5, 3.5]
    assert detect_cry(synthetic_cry(amp=0.003), SR) == []  # -50 dBFS: below the onset level


def test_streaming_periods_on_the_monotonic_clock() -> None:
    x = (synthetic_cry() * 32767).astype(np.int16)
    t0 = 5_000_000_000_000
    det = CryDetector()
    closed, ongoing_seen = [], False
    for k in range(0, x.size, 512):
        chunk = x[k:k + 512]
        period = AudioPeriod(t_ns=t0 + (k + chunk.size - 1) * 10**9 // SR, samples=chunk, rate=SR, seq=k // 512)
        closed += det.push_period(period)
        cur = det.segment_at(period.t_ns)
        if period.t_ns - t0 > 3 * 10**9 and period.t_ns - t0 < 4.5 * 10**9:
            ongoing_seen |= cur is not None and cur.ongoing
    assert ongoing_seen
    assert len(closed) == 1
    offline = detect_cry(x, SR, t0_ns=t0)[0]
    assert abs(closed[0].start_ns - offline.start_ns) < 20_000_000
    assert abs(closed[0].end_ns - offline.end_ns) < 20_000_000
    seg = closed[0]
    assert det.segment_at(seg.end_ns + 500_000_000, hold_s=1.0) == seg
    assert det.segment_at(seg.end_ns + 2_000_000_000, hold_s=1.0) is None
    assert det.segment_at(seg.start_ns - 1) is None


def test_config_and_input_errors() -> None:
    with pytest.raises(ValueError, match="frame_len"):
        CryConfig(frame_len=64)
    with pytest.raises(ValueError, match="off_dbfs"):
        CryConfig(off_dbfs=-10, on_dbfs=-20)
    with pytest.raises(TypeError, match="int16 or float"):
        CryDetector().push(np.zeros(10, np.int32), 0)
