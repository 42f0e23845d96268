"""WindowBuilder: what the models see at time t, cut from the ring buffers, with honest freshness flags.

For a time ``t`` (monotonic ns) a :class:`Window` holds
- video: the last ``n_frames`` face crops resampled to the model's frame rate from the last n/fps seconds (the
  slots lie on the clip grid, whole multiples of 1/fps s on the monotonic clock, so the latest slot is at most
  1/fps before t; :mod:`appliance.scoring.clip_frames` says why),
- audio: the current cry segment's samples (or, with no cry, the last few seconds),
- vitals: the last 30 s of HR/SpO2 samples, and rr: the last 30 s of RR intervals,
each with ``present`` (data in the window; spans are half-open, (t - span, t]), ``quality_ok``, ``age_s`` (t minus the newest sample) and ``stale``
(age beyond a per-modality limit). ``usable`` joins them; the fusion model's presence mask is built from
``usable`` only, so a modality whose newest data is old is never presented as current, even when its
buffer still holds data inside the window span (data are kept for logging, flagged).

Fill: each window also says how much of its span its data cover (``fill``), and a modality below its
``min_fill_*`` (``[scoring]`` in the config) is not of usable quality, with ``problem = "underfilled"``. Why:
right after start-up, or after a source came back, a window holds a fraction of a second of data -- the first
score of a daemon once came from 0.16 s of vitals -- and a network trained on full windows says nothing
meaningful about a sliver. Video: the share of the 16 slots that have a face at or before their time (slots
before the first face would repeat the earliest face a slot takes). Audio: captured samples over the span
asked for (the cry segment or the last few seconds). Vitals: the share of the 30 s covered by readings with a value, each holding
``vitals_hold_s`` (monitors send every 1-2 s), so a sparse or interrupted monitor counts as partly empty. RR:
how far back the beats reach in the 30 s.

Independent of model code on purpose: it returns raw data (uint8 BGR crops, float audio in [-1, 1], vitals
arrays); normalisation and features live in ``models/features/`` (``inputs.py`` is the one conversion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from appliance.config import default
from appliance.scoring.buffers import ModalityBuffers, face_px_of
from appliance.scoring.clip_frames import ClipGrid
from appliance.sources.face_crop import face_of
from appliance.clock import NS_PER_S, now_ns
from models.features.cry import CrySegment


class CrySegments(Protocol):
    """What the builder needs from a cry detector (``models.features.cry.CryDetector`` provides it)."""

    def segment_at(self, t_ns: int, hold_s: float = 0.0) -> CrySegment | None: ...


@dataclass(frozen=True)
class WindowConfig:
    """Window geometry, freshness limits (seconds) and the least fill of each window (0-1, see module doc)."""

    n_frames: int = 16
    frame_fps: float = 8.0
    min_face_fraction: float = 0.75
    min_distinct_frames: int = 8
    min_fill_video: float = default("scoring", "min_fill_video")
    video_max_age_s: float = default("scoring", "max_age_video_s")
    audio_recent_s: float = 3.0
    audio_max_s: float = 10.0
    cry_hold_s: float = 1.0
    audio_max_age_s: float = default("scoring", "max_age_audio_s")
    min_audio_coverage: float = default("scoring", "min_fill_audio")
    vitals_span_s: float = 30.0
    vitals_max_age_s: float = default("scoring", "max_age_vitals_s")
    min_vitals_valid_fraction: float = 0.5
    min_fill_vitals: float = default("scoring", "min_fill_vitals")  # numerics and RR alike
    vitals_hold_s: float = 2.0  # how long one monitor reading covers the window (monitors send every 1-2 s)
    rr_max_age_s: float = default("scoring", "max_age_vitals_s")  # RR intervals come with the vitals
    min_rr_count: int = 10

    def __post_init__(self) -> None:
        if self.n_frames < 1 or not self.frame_fps > 0:
            raise ValueError(f"WindowConfig: n_frames >= 1 and frame_fps > 0 required, got "
                             f"{self.n_frames}, {self.frame_fps}")
        for name in ("video_max_age_s", "audio_max_age_s", "vitals_max_age_s", "rr_max_age_s",
                     "audio_recent_s", "audio_max_s", "vitals_span_s", "vitals_hold_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"WindowConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("min_fill_video", "min_audio_coverage", "min_fill_vitals"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WindowConfig.{name} must be in [0, 1], got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ModalityStatus:
    """Presence, quality and freshness of one modality in one window.

    ``problem`` names why the quality is not ok in one snake_case word the quality gate turns into the flag
    ``<modality>_<problem>`` (``underfilled``; None means the generic ``low_quality``); ``reason`` says it for
    people.
    """

    present: bool
    quality_ok: bool
    age_s: float | None
    stale: bool
    reason: str
    problem: str | None = None

    @property
    def usable(self) -> bool:
        """True only for data that exist, passed quality and are fresh: the fusion presence mask."""
        return self.present and self.quality_ok and not self.stale


def _status(present: bool, quality_ok: bool, newest_ns: int | None, t_ns: int, max_age_s: float,
            reason: str, problem: str | None = None) -> ModalityStatus:
    age = None if newest_ns is None else (t_ns - newest_ns) / NS_PER_S
    stale = age is None or age > max_age_s
    if stale and present:
        reason = f"stale: newest sample {age:.2f} s old (limit {max_age_s} s)"
    return ModalityStatus(present, quality_ok, age, stale, reason, None if quality_ok else problem)


def _underfilled(fill: float, need: float, what: str) -> str:
    """The reason text of a window filled below its minimum."""
    return f"underfilled: {what} fill {fill:.0%} of the window (need {need:.0%})"


def held_fill(times_ns: np.ndarray, hold_ns: int, t0: int, t1: int) -> float:
    """Share of (t0, t1] covered when each stamp covers ``hold_ns`` after it (or up to the next stamp)."""
    if times_ns.size == 0 or t1 <= t0:
        return 0.0
    times = np.sort(times_ns.astype(np.int64))
    ends = np.minimum(times + hold_ns, np.append(times[1:], t1))
    covered = np.clip(ends, t0, t1) - np.clip(times, t0, t1)
    return float(np.clip(covered, 0, None).sum() / (t1 - t0))


@dataclass(frozen=True)
class VideoWindow:
    status: ModalityStatus
    frames: np.ndarray | None  # (n_frames, H, W, 3) uint8 BGR face crops
    times_ns: np.ndarray | None  # arrival stamp of the frame used in each slot
    distinct: int  # how many different camera frames fill the slots
    face_fraction: float  # share of camera frames in the span that had a face
    fill: float = 0.0  # share of the slots with a frame at or before their time
    face_px: float | None = None  # the smallest face among the used crops, in the camera's own pixels


@dataclass(frozen=True)
class AudioWindow:
    status: ModalityStatus
    samples: np.ndarray | None  # float32 mono in [-1, 1)
    rate: int
    start_ns: int
    end_ns: int
    source: str  # "cry" (the current cry segment) or "recent" (the last audio_recent_s)
    cry: CrySegment | None
    gaps: int  # overruns or device loss inside the span
    fill: float = 0.0  # captured samples over the samples the span asks for


@dataclass(frozen=True)
class VitalsWindow:
    status: ModalityStatus
    times_ns: np.ndarray
    hr_bpm: np.ndarray  # NaN where the monitor reported "not available"
    spo2_pct: np.ndarray
    valid: np.ndarray  # the monitor's own per-sample quality verdict
    fill: float = 0.0  # share of the 30 s covered by readings with a value (each held vitals_hold_s)


@dataclass(frozen=True)
class RRWindow:
    status: ModalityStatus
    times_ns: np.ndarray
    rr_ms: np.ndarray
    fill: float = 0.0  # how far back the valid beats reach, as a share of the 30 s


@dataclass(frozen=True)
class Window:
    t_ns: int
    video: VideoWindow
    audio: AudioWindow
    vitals: VitalsWindow
    rr: RRWindow

    def presence_mask(self) -> dict[str, bool]:
        """Modality -> usable; the only thing the fusion model should take as 'present'."""
        return {name: getattr(self, name).status.usable for name in ("video", "audio", "vitals", "rr")}


class WindowBuilder:
    """Cuts :class:`Window` objects from :class:`ModalityBuffers` (thread-safe: the buffers are)."""

    def __init__(self, buffers: ModalityBuffers, config: WindowConfig | None = None,
                 cry: CrySegments | None = None) -> None:
        self.buffers = buffers
        self.config = config or WindowConfig()
        self.cry = cry
        self.grid = ClipGrid(self.config.frame_fps)

    def build(self, t_ns: int | None = None) -> Window:
        """The window ending at ``t_ns`` (default: now on the monotonic clock)."""
        t = now_ns() if t_ns is None else int(t_ns)
        return Window(t, self.video(t), self.audio(t), self.vitals(t), self.rr(t))

    # -- video ---------------------------------------------------------------------------------------------
    def video(self, t: int) -> VideoWindow:
        cfg = self.config
        slots = self.grid.slots(t, cfg.n_frames)  # the clip grid's ticks, not t - k/fps (ClipGrid: why)
        span = int(cfg.n_frames * NS_PER_S / cfg.frame_fps)
        obs = self.buffers.frames.between(slots[-1] - span + 1, t)  # (last slot - span, t]
        faces = [o for o in obs if face_of(o) is not None]
        newest = faces[-1].t_ns if faces else self._newest_face_before(slots[-1] - span)
        if not faces:
            reason = "no camera frames" if not obs else f"no face ({obs[-1].reason})"
            return VideoWindow(_status(False, False, newest, t, cfg.video_max_age_s, reason), None, None, 0,
                               0.0)
        shapes = {face_of(o).shape for o in faces}
        if len(shapes) != 1:
            raise ValueError(f"WindowBuilder.video: face crops of different shapes in one window: {shapes}")
        stamps = np.array([o.t_ns for o in faces], dtype=np.int64)
        # causal resampling: each slot takes the newest face at or before its time; slots before the first face
        # repeat the earliest face a slot takes (the newest face when none does: an underfilled window). Never
        # a face no slot takes: the camera thread drops those unresized (ClipFrames).
        newest_before = np.searchsorted(stamps, np.asarray(slots, dtype=np.int64), side="right") - 1
        taken = newest_before[newest_before >= 0]
        fill = float(taken.size / len(slots))
        pick = np.where(newest_before >= 0, newest_before, taken.min() if taken.size else len(faces) - 1)
        # a face superseded since this snapshot stands for the newer one (FaceCrop.resolve); resized if pending
        chosen = {int(i): face_of(faces[int(i)]).resolve() for i in np.unique(pick)}
        pixels = {i: crop.pixels() for i, crop in chosen.items()}
        frames = np.stack([pixels[int(i)] for i in pick])
        times = np.array([chosen[int(i)].t_ns for i in pick], dtype=np.int64)
        distinct = len({id(crop) for crop in chosen.values()})
        face_fraction = len(faces) / len(obs)
        # (a successor standing in for a superseded face counts with the size of the face it replaced)
        sizes = [px for i in chosen if (px := face_px_of(faces[i])) is not None]
        face_px = min(sizes) if sizes else None
        problem = None
        if fill < cfg.min_fill_video:
            quality, problem = False, "underfilled"
            reason = _underfilled(fill, cfg.min_fill_video, "camera frames")
        else:
            quality = face_fraction >= cfg.min_face_fraction and distinct >= min(cfg.min_distinct_frames, cfg.n_frames)
            reason = "ok" if quality else f"low quality: face in {face_fraction:.0%} of frames, {distinct} distinct"
        return VideoWindow(_status(True, quality, newest, t, cfg.video_max_age_s, reason, problem), frames,
                           times, distinct, face_fraction, fill, face_px)

    def _newest_face_before(self, t: int) -> int | None:
        for o in reversed(self.buffers.frames.between(t - self.buffers.frames.max_span_ns, t)):
            if face_of(o) is not None:
                return o.t_ns
        return None

    # -- audio ---------------------------------------------------------------------------------------------
    def audio(self, t: int) -> AudioWindow:
        cfg = self.config
        seg = self.cry.segment_at(t, cfg.cry_hold_s) if self.cry is not None else None
        if seg is not None:
            a1 = t if seg.end_ns is None else min(seg.end_ns, t)
            a0 = max(seg.start_ns, a1 - int(cfg.audio_max_s * NS_PER_S))
            source = "cry"
        else:
            a1 = t
            a0 = t - int(cfg.audio_recent_s * NS_PER_S)
            source = "recent"
        newest = self.buffers.audio.latest(t)
        newest_ns = newest.t_ns if newest is not None else None
        rate = newest.rate if newest is not None else 16000
        # periods are stamped at their last sample: look a little past a1 for one that straddles it
        periods = self.buffers.audio.between(a0, min(t, a1 + NS_PER_S))
        chunks, gaps = [], 0
        for k, p in enumerate(periods):
            n = len(p.samples)
            times = p.t_ns - ((n - 1 - np.arange(n)) * NS_PER_S) // p.rate
            keep = (times >= a0) & (times <= a1)
            if keep.any():
                chunks.append(p.samples[keep])
                gaps += int(p.gap_before and k > 0)
        if not chunks:
            reason = "no audio periods" if newest is None else "no audio in window"
            return AudioWindow(_status(False, False, newest_ns, t, cfg.audio_max_age_s, reason), None, rate,
                               a0, a1, source, seg, gaps)
        pcm = np.concatenate(chunks)
        samples = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
        expected = max(1, (a1 - a0) * rate // NS_PER_S)
        coverage = min(1.0, samples.size / expected)
        problem = None
        if coverage < cfg.min_audio_coverage:
            quality, problem = False, "underfilled"
            reason = _underfilled(coverage, cfg.min_audio_coverage, "captured samples")
        else:
            quality = gaps == 0
            reason = "ok" if quality else f"low quality: {gaps} gaps"
        return AudioWindow(_status(True, quality, newest_ns, t, cfg.audio_max_age_s, reason, problem), samples,
                           rate, a0, a1, source, seg, gaps, coverage)

    # -- vitals --------------------------------------------------------------------------------------------
    def vitals(self, t: int) -> VitalsWindow:
        cfg = self.config
        t0 = t - int(cfg.vitals_span_s * NS_PER_S)
        got = self.buffers.vitals.between(t0 + 1, t)
        times = np.array([s.t_ns for s in got], dtype=np.int64)
        hr = np.array([np.nan if s.hr_bpm is None else s.hr_bpm for s in got], dtype=np.float64)
        spo2 = np.array([np.nan if s.spo2_pct is None else s.spo2_pct for s in got], dtype=np.float64)
        valid = np.array([bool(s.valid) for s in got], dtype=bool)
        newest = self.buffers.vitals.latest(t)
        has_value = valid & (np.isfinite(hr) | np.isfinite(spo2))
        frac = float(has_value.mean()) if got else 0.0
        fill = held_fill(times[has_value], int(cfg.vitals_hold_s * NS_PER_S), t0, t) if got else 0.0
        problem = None
        if got and fill < cfg.min_fill_vitals:
            quality, problem = False, "underfilled"
            reason = _underfilled(fill, cfg.min_fill_vitals, f"readings held {cfg.vitals_hold_s:g} s")
        else:
            quality = bool(got) and frac >= cfg.min_vitals_valid_fraction
            reason = ("no vitals samples" if not got else
                      "ok" if quality else f"low quality: {frac:.0%} of samples valid with a value")
        status = _status(bool(got), quality, None if newest is None else newest.t_ns, t, cfg.vitals_max_age_s,
                         reason, problem)
        return VitalsWindow(status, times, hr, spo2, valid, fill)

    def rr(self, t: int) -> RRWindow:
        cfg = self.config
        span = int(cfg.vitals_span_s * NS_PER_S)
        got = self.buffers.rr.between(t - span + 1, t)
        good = [r for r in got if r.valid]
        newest = self.buffers.rr.latest(t)
        # the first valid beat's interval starts rr_ms before it: that is how far back the beats reach
        fill = min(1.0, (t - good[0].t_ns + int(good[0].rr_ms * 1e6)) / span) if good else 0.0
        problem = None
        if good and fill < cfg.min_fill_vitals:
            quality, problem = False, "underfilled"
            reason = _underfilled(fill, cfg.min_fill_vitals, "beats")
        else:
            quality = len(good) >= cfg.min_rr_count
            reason = ("no RR intervals" if not got else
                      "ok" if quality else f"low quality: {len(good)} valid intervals (< {cfg.min_rr_count})")
        status = _status(bool(got), quality, None if newest is None else newest.t_ns, t, cfg.rr_max_age_s, reason,
                         problem)
        return RRWindow(status, np.array([r.t_ns for r in good], dtype=np.int64),
                        np.array([r.rr_ms for r in good], dtype=np.float64), fill)
