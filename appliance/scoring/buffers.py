"""Thread-safe ring buffers, one per modality, keyed by the monotonic arrival stamp.

Sources push from their own threads while the scoring loop reads windows; a buffer is the only thing they
share, so it carries the lock. Each buffer is bounded both by time span (what a window can ever ask for, plus
margin) and by count (a hard memory cap if a source misbehaves and floods), and answers range queries by
binary search on the stamps.
"""
from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, Protocol, TypeVar

import numpy as np

from appliance.clock import NS_PER_S
from appliance.sources.face_crop import FaceCrop, WithFace, as_face_crop, face_of


class Stamped(Protocol):
    """Anything stamped once at arrival on the monotonic clock (``appliance.clock.now_ns``)."""

    @property
    def t_ns(self) -> int: ...


T = TypeVar("T", bound=Stamped)


class FaceSample(WithFace):
    """One camera frame as the window builder needs it: the face tracker's crop (or ``None`` and why) and
    the face's size in the camera's own pixels.

    Why ``face_px`` travels with the crop: the crop is resized to the model's size (224 or 64 px) whatever
    it was cut from, so only the frame can say how much resolution the face had -- a 1x1 camera stream
    upscaled to 1280x720 gives a "face" of one real pixel. It is the shorter side of the face box (the fixed
    ROI, or the detected face) clipped to the frame, before any resizing by the camera
    (:meth:`appliance.sources.camera.Frame.source_px`); the quality gate refuses video below
    ``[scoring] min_face_px``.

    ``face`` is the crop as a :class:`~appliance.sources.face_crop.FaceCrop`, resized only when a clip takes it
    (the frame sink, :class:`appliance.scoring.clip_frames.ClipFrames`, drops the ones no clip can take);
    ``crop`` (its pixels) may be given as a plain array.
    """

    __slots__ = ("t_ns", "face", "reason", "face_px")

    def __init__(self, t_ns: int, crop: FaceCrop | np.ndarray | None, reason: str,
                 face_px: float | None = None) -> None:
        self.t_ns = t_ns
        self.face = as_face_crop(t_ns, crop)
        self.reason = reason
        self.face_px = face_px

    @classmethod
    def of(cls, frame: Any, observation: Any) -> "FaceSample":
        """From a camera ``Frame`` and the ``FaceObservation`` the tracker made of it (nothing is resized)."""
        box = observation.box
        face = face_of(observation)
        face_px = frame.source_px(box) if face is not None and box is not None else None
        return cls(int(observation.t_ns), face, observation.reason, face_px)

    def __repr__(self) -> str:
        return f"FaceSample(t_ns={self.t_ns}, face={self.face!r}, reason={self.reason!r}, face_px={self.face_px})"


def face_px_of(item: Any) -> float | None:
    """Face size in camera pixels of a frames-buffer item: a :class:`FaceSample`'s ``face_px``, or for a bare
    ``FaceObservation`` (tests, tools that fill buffers themselves) the shorter side of its box, whose frame
    pixels are then taken as the camera's."""
    px = getattr(item, "face_px", None)
    if px is not None:
        return float(px)
    box = getattr(item, "box", None)
    return None if box is None else float(min(box[2], box[3]))


@dataclass(frozen=True)
class VitalsSample:
    """One numeric update from a patient monitor (HR and/or SpO2), as the window builder consumes it.

    ``None`` means the monitor reported the value as not available ("--"), which is different from a value.
    ``valid`` is the monitor's own quality verdict (e.g. Masimo EXC bits, Nellcor status codes).
    """

    t_ns: int
    hr_bpm: float | None
    spo2_pct: float | None
    valid: bool = True
    source: str = ""

    @classmethod
    def from_monitor(cls, sample: Any) -> "VitalsSample":
        """Adapt a monitor driver's ``VitalSample`` (``appliance.sources.monitor.types``: ``t_mono_ns``, ``hr``,
        ``spo2``, ``pulse_rate``). HR falls back to the pulse rate (Masimo/Nellcor report only that); the
        drivers already set a value to ``None`` when their own flags make it untrustworthy."""
        hr = sample.hr if sample.hr is not None else getattr(sample, "pulse_rate", None)
        spo2 = sample.spo2
        return cls(int(sample.t_mono_ns), None if hr is None else float(hr), None if spo2 is None else float(spo2),
                   valid=hr is not None or spo2 is not None, source=getattr(sample, "source", ""))


@dataclass(frozen=True)
class RRInterval:
    """One beat-to-beat interval (from ECG R-peaks); stamped at arrival of the closing beat."""

    t_ns: int
    rr_ms: float
    valid: bool = True


def extend_rr(buffer: "RingBuffer[RRInterval]", batch: Any) -> int:
    """Append a monitor driver's ``RRIntervals`` batch (``beat_t_mono_ns``, ``rr_ms``) beat by beat.

    Each interval is keyed by its closing beat's host time. NaN intervals (first beat after a restart) and
    beats not newer than the buffer's newest (re-sent after a reconnect) are skipped. Returns the count added.
    """
    newest = buffer.latest()
    last = newest.t_ns if newest is not None else None
    added = 0
    for t, rr in zip(batch.beat_t_mono_ns, batch.rr_ms):
        t = int(t)
        if not math.isfinite(float(rr)) or (last is not None and t <= last):
            continue
        buffer.append(RRInterval(t, float(rr)))
        last = t
        added += 1
    return added


class RingBuffer(Generic[T]):
    """A bounded, time-ordered, thread-safe buffer of stamped items.

    Items must arrive in non-decreasing ``t_ns`` order (each source stamps at arrival on one monotonic clock);
    an item older than the newest is refused with ``ValueError`` rather than silently reordering history.
    """

    def __init__(self, name: str, *, max_span_s: float, max_count: int) -> None:
        if not (max_span_s > 0 and math.isfinite(max_span_s)):
            raise ValueError(f"RingBuffer {name!r}: max_span_s must be a positive finite number, got {max_span_s!r}")
        if max_count < 1:
            raise ValueError(f"RingBuffer {name!r}: max_count must be >= 1, got {max_count!r}")
        self.name = name
        self.max_span_ns = int(max_span_s * NS_PER_S)
        self.max_count = int(max_count)
        self._times: deque[int] = deque()
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self.dropped = 0  # items evicted by the count cap before their time span ran out

    def append(self, item: T) -> None:
        """Add ``item``; evict what falls outside the span of the newest stamp or beyond the count cap."""
        t = item.t_ns
        if not isinstance(t, int):
            raise TypeError(f"RingBuffer {self.name!r}: t_ns must be int nanoseconds, got {type(t).__name__}")
        with self._lock:
            if self._times and t < self._times[-1]:
                raise ValueError(
                    f"RingBuffer {self.name!r}: t_ns {t} is older than the newest item {self._times[-1]}"
                )
            self._times.append(t)
            self._items.append(item)
            horizon = t - self.max_span_ns
            while self._times and self._times[0] < horizon:
                self._times.popleft()
                self._items.popleft()
            while len(self._times) > self.max_count:
                self._times.popleft()
                self._items.popleft()
                self.dropped += 1

    def between(self, t0_ns: int, t1_ns: int) -> list[T]:
        """Items with ``t0_ns <= t_ns <= t1_ns``, oldest first."""
        if t1_ns < t0_ns:
            raise ValueError(f"RingBuffer {self.name!r}: empty range t0_ns={t0_ns} > t1_ns={t1_ns}")
        with self._lock:
            lo = bisect.bisect_left(self._times, t0_ns)
            hi = bisect.bisect_right(self._times, t1_ns)
            return list(itertools.islice(self._items, lo, hi))

    def last(self, n: int, until_ns: int | None = None) -> list[T]:
        """The newest ``n`` items stamped at or before ``until_ns`` (default: all), oldest first."""
        with self._lock:
            hi = len(self._times) if until_ns is None else bisect.bisect_right(self._times, until_ns)
            return list(itertools.islice(self._items, max(0, hi - n), hi))

    def latest(self, until_ns: int | None = None) -> T | None:
        """The newest item stamped at or before ``until_ns`` (default: the newest of all), or ``None``."""
        got = self.last(1, until_ns)
        return got[0] if got else None

    def clear(self) -> None:
        with self._lock:
            self._times.clear()
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._times)

    def __iter__(self) -> Iterator[T]:
        with self._lock:
            return iter(list(self._items))


@dataclass
class ModalityBuffers:
    """The buffers the scoring loop reads: face samples, audio periods, vitals samples, RR intervals.

    Default spans cover the longest window (30 s of vitals) with margin; counts cap memory at roughly
    60 fps video, 5 ms audio periods and 10 Hz vitals over that span.
    """

    frames: RingBuffer = field(default_factory=lambda: RingBuffer("frames", max_span_s=10.0, max_count=600))
    audio: RingBuffer = field(default_factory=lambda: RingBuffer("audio", max_span_s=40.0, max_count=8000))
    vitals: RingBuffer = field(default_factory=lambda: RingBuffer("vitals", max_span_s=40.0, max_count=400))
    rr: RingBuffer = field(default_factory=lambda: RingBuffer("rr", max_span_s=40.0, max_count=400))
