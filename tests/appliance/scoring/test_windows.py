"""WindowBuilder on explicit timestamps: resampling, cry audio, 30 s vitals, and stale flags after a source
stops (no sleeps: the window time is moved instead)."""
from __future__ import annotations

import numpy as np
import pytest

from appliance.scoring.buffers import ModalityBuffers, RRInterval, VitalsSample
from models.features.cry import CryDetector
from appliance.sources.face import FaceObservation
from appliance.sources.microphone import AudioPeriod
from appliance.scoring.windows import WindowBuilder, WindowConfig

S = 10**9
SR = 16000
T0 = 1_000 * S  # an arbitrary monotonic origin


def crop(i: int) -> np.ndarray:
    return np.full((8, 8, 3), i % 256, np.uint8)  # frame index encoded in the pixels


def fill_video(b: ModalityBuffers, t_end: int, fps: float = 30.0, seconds: float = 4.0,
               face: bool = True) -> None:
    n = int(seconds * fps)
    for i in range(n):
        t = t_end - int((n - 1 - i) * S / fps)
        b.frames.append(FaceObservation(t, crop(i) if face else None, (0, 0, 8, 8) if face else None,
                                        "detected" if face else "no face detected", frame_index=i))


def fill_audio(b: ModalityBuffers, x: np.ndarray, t_first: int, period: int = 512, det: CryDetector | None = None,
               gap_at: int | None = None) -> int:
    t = t_first
    for k in range(0, x.size - period + 1, period):
        t = t_first + (k + period - 1) * S // SR
        p = AudioPeriod(t, x[k:k + period], SR, k // period, gap_before=(k // period == gap_at))
        b.audio.append(p)
        if det is not None:
            det.push_period(p)
    return t


def fill_vitals(b: ModalityBuffers, t_end: int, seconds: int = 40, hr: float = 140.0) -> None:
    for s in range(seconds):
        t = t_end - (seconds - 1 - s) * S
        b.vitals.append(VitalsSample(t, hr_bpm=hr + s % 3, spo2_pct=97.0 if s % 5 else None))
        b.rr.append(RRInterval(t, rr_ms=430.0 + s))


def test_all_fresh_modalities_are_usable() -> None:
    b = ModalityBuffers()
    t = T0 + 10 * S
    fill_video(b, t)
    fill_audio(b, (np.random.default_rng(0).normal(0, 0.05, 5 * SR) * 32767).astype(np.int16), t - 5 * S)
    fill_vitals(b, t)
    w = WindowBuilder(b, WindowConfig(n_frames=16, frame_fps=8.0)).build(t)
    assert w.presence_mask() == {"video": True, "audio": True, "vitals": True, "rr": True}
    v = w.video
    assert v.frames.shape == (16, 8, 8, 3) and v.frames.dtype == np.uint8
    # 16 slots at 8 fps from a 30 fps camera: slot j holds the newest frame at or before t - (15 - j)/8 s
    idx = v.frames[:, 0, 0, 0].astype(int)
    expected = [119 - int(np.ceil((15 - j) / 8 * 30)) for j in range(16)]
    assert idx.tolist() == expected and v.distinct == 16 and v.status.age_s == 0.0
    assert (v.times_ns <= t).all() and (v.times_ns >= t - 2 * S).all()
    a = w.audio
    assert a.source == "recent" and a.samples.dtype == np.float32 and np.abs(a.samples).max() <= 1.0
    assert a.samples.size == pytest.approx(3 * SR, abs=512)
    vit = w.vitals
    assert vit.times_ns.size == 30 and vit.times_ns.min() >= t - 30 * S  # the last 30 s, not the 40 buffered
    assert np.isnan(vit.spo2_pct).sum() == 6 and vit.hr_bpm.max() == 142.0
    assert w.rr.rr_ms.size == 30 and w.rr.rr_ms[-1] == 469.0


def test_stale_flags_after_sources_stop() -> None:
    b = ModalityBuffers()
    t_stop = T0 + 10 * S
    fill_video(b, t_stop)
    fill_audio(b, np.zeros(5 * SR, np.int16), t_stop - 5 * S)
    fill_vitals(b, t_stop)
    # video and audio older than 0.5 s are stale here (the spec's default is 1 s; the limit is what is tested)
    builder = WindowBuilder(b, WindowConfig(video_max_age_s=0.5, audio_max_age_s=0.5))
    w = builder.build(t_stop + S)  # 1 s after everything stopped
    # the 2 s clip span still holds frames, but they are 1 s old: flagged, not usable
    assert w.video.status.present and w.video.status.stale and not w.video.status.usable
    assert w.video.status.age_s == pytest.approx(1.0) and "stale" in w.video.status.reason
    assert w.audio.status.stale and not w.audio.status.usable
    # vitals inside the 30 s span still exist but are only 1 s old: fine (limit 5 s) ...
    assert w.vitals.status.usable and w.vitals.status.age_s == pytest.approx(1.0)
    w = builder.build(t_stop + 6 * S)
    assert not w.video.status.present and w.video.frames is None and w.video.status.age_s == pytest.approx(6.0)
    # ... 6 s later they are present in the span yet stale, so never presented as current
    assert w.vitals.status.present and w.vitals.status.stale and "stale" in w.vitals.status.reason
    assert w.presence_mask() == {"video": False, "audio": False, "vitals": False, "rr": False}
    empty = WindowBuilder(ModalityBuffers()).build(T0)
    assert empty.video.status.reason == "no camera frames" and empty.video.status.age_s is None
    assert empty.audio.status.reason == "no audio periods" and not any(empty.presence_mask().values())


def test_no_face_and_low_quality_video() -> None:
    b = ModalityBuffers()
    t = T0 + 10 * S
    fill_video(b, t - 3 * S, seconds=2.0)  # a face until 3 s ago
    fill_video(b, t, seconds=2.9, face=False)  # then frames without a face
    w = WindowBuilder(b).build(t)
    s = w.video.status
    assert not s.present and s.reason == "no face (no face detected)"
    assert s.age_s == pytest.approx(3.0) and s.stale  # age counts from the last real face
    b2 = ModalityBuffers()
    fill_video(b2, t, fps=4.0)  # a slow 4 fps camera: 8 frames in the 2 s span cannot fill 16 slots
    w2 = WindowBuilder(b2, WindowConfig(min_distinct_frames=12)).build(t)
    assert w2.video.status.present and not w2.video.status.quality_ok and w2.video.distinct == 8


def cry_audio() -> np.ndarray:
    t = np.arange(6 * SR) / SR
    ph = 2 * np.pi * 450 * t
    x = sum(0.6 ** k * np.sin((k + 1) * ph) for k in range(4))
    x = 0.3 * x / np.abs(x).max() * ((t >= 2.0) & (t < 4.0))
    return (x * 32767).astype(np.int16)


def test_audio_is_the_current_cry_segment() -> None:
    b, det = ModalityBuffers(), CryDetector()
    t_first = T0
    t_last = fill_audio(b, cry_audio(), t_first, det=det)
    builder = WindowBuilder(b, cry=det)
    during = builder.build(t_first + int(3.5 * S)).audio
    assert during.source == "cry" and during.cry.start_ns == pytest.approx(t_first + 2 * S, abs=0.05 * S)
    assert during.samples.size == pytest.approx(1.5 * SR, abs=0.06 * SR)  # from cry onset to t
    assert during.status.usable
    after = builder.build(t_last).audio  # 2 s after the cry ended: longer than cry_hold_s
    assert after.source == "recent" and after.cry is None
    held = builder.build(t_first + int(4.5 * S)).audio
    assert held.source == "cry" and held.end_ns == held.cry.end_ns
    assert held.samples.size == pytest.approx(2 * SR, abs=0.06 * SR)
    assert np.abs(held.samples).max() > 0.2


def test_audio_gap_lowers_quality() -> None:
    b = ModalityBuffers()
    t = fill_audio(b, np.zeros(4 * SR, np.int16), T0, gap_at=60)
    a = WindowBuilder(b).build(t).audio
    assert a.status.present and a.gaps == 1 and not a.status.quality_ok and not a.status.usable


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="vitals_max_age_s"):
        WindowConfig(vitals_max_age_s=0)
    with pytest.raises(ValueError, match="frame_fps"):
        WindowConfig(frame_fps=0)


# ---------------------------------------------------------------------------------------------- fill
def test_a_window_filled_below_its_minimum_is_not_usable_and_says_why() -> None:
    """The daemon's first score once came from 0.16 s of vitals: a window must be filled to ``min_fill_*``."""
    b = ModalityBuffers()
    t = T0 + 10 * S
    b.vitals.append(VitalsSample(t - int(0.16 * S), hr_bpm=140.0, spo2_pct=97.0))  # one reading, 0.16 s old
    b.vitals.append(VitalsSample(t, hr_bpm=141.0, spo2_pct=97.0))
    fill_video(b, t, seconds=0.5)  # the camera opened half a second ago: 4 of 16 slots have a frame
    fill_audio(b, (np.random.default_rng(1).normal(0, 0.05, SR) * 32767).astype(np.int16), t - S)  # 1 s of 3
    w = WindowBuilder(b).build(t)
    for name, fill in [("video", 4 / 16), ("audio", 1 / 3), ("vitals", 0.16 / 30)]:
        m = getattr(w, name)
        assert m.status.present and not m.status.quality_ok and not m.status.usable, name
        assert m.status.problem == "underfilled" and m.status.reason.startswith("underfilled"), m.status
        assert m.fill == pytest.approx(fill, abs=0.01), (name, m.fill)
    assert "fill 1% of the window (need 50%)" in w.vitals.status.reason
    # the same sources a while later fill their windows: usable
    fill_video(b, t + 2 * S, seconds=2.0)
    fill_audio(b, (np.random.default_rng(2).normal(0, 0.05, 3 * SR) * 32767).astype(np.int16), t + 1)
    for k in range(1, 17):
        b.vitals.append(VitalsSample(t + k * S, hr_bpm=140.0, spo2_pct=97.0))
    later = WindowBuilder(b).build(t + 16 * S - 1)
    assert later.vitals.status.usable and later.vitals.fill == pytest.approx(16.16 / 30, abs=0.01)
    w2 = WindowBuilder(b).build(t + 2 * S)
    assert w2.video.status.usable and w2.video.fill == 1.0


def test_vitals_fill_counts_time_covered_not_samples() -> None:
    """A reading holds 2 s: a monitor that went silent for 19 s of the 30 leaves the window a third filled,
    and readings without a value (sensor off) cover nothing."""
    b = ModalityBuffers()
    t = T0 + 60 * S
    for s in range(31):
        stamp = t - (30 - s) * S
        if not 5 <= s < 25:  # silent from 25 s to 5 s before t
            b.vitals.append(VitalsSample(stamp, hr_bpm=140.0, spo2_pct=97.0))
    gappy = WindowBuilder(b).build(t)
    assert gappy.vitals.fill == pytest.approx(10 / 30, abs=0.01)  # 29..24 s and 5..0 s before t
    assert gappy.vitals.status.problem == "underfilled" and not gappy.vitals.status.usable
    b2 = ModalityBuffers()
    for s in range(31):
        b2.vitals.append(VitalsSample(t - (30 - s) * S, hr_bpm=None if s % 3 else 140.0, spo2_pct=None,
                                      valid=not s % 3))
    assert WindowBuilder(b2).build(t).vitals.fill == pytest.approx(18 / 30, abs=0.01)  # 9 readings x 2 s
    with pytest.raises(ValueError, match="min_fill_vitals"):
        WindowConfig(min_fill_vitals=1.5)
    # beats: how far back they reach
    b3 = ModalityBuffers()
    for k in range(12):
        b3.rr.append(RRInterval(t - (11 - k) * S // 2, rr_ms=500.0))
    rr = WindowBuilder(b3).build(t).rr
    assert rr.fill == pytest.approx(6 / 30, abs=0.01) and rr.status.problem == "underfilled"
