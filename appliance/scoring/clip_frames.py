"""Which camera frames a video clip can take, and the frame sink that resizes only those.

Why: a clip has 16 slots at 8 frames a second while the camera delivers 30, so most frames never reach the
network. Each slot takes the newest face at or before its time (``appliance.scoring.windows``), and the slot
times lie on one fixed grid, whole multiples of 1/fps seconds on the monotonic clock (:class:`ClipGrid`),
whatever time a window is built for. So the camera thread knows, one face later, whether a face will ever fill
a slot: it will exactly when a grid tick lies between it and the next face. :class:`ClipFrames` resizes those
faces then, in the camera thread (so the scoring thread finds its crops ready, as before), and drops the
others unresized. With a face filling a 1280x720 frame's height that is 8 instead of 30 resizes of about
1.5 ms a second: the camera thread's CPU went from 124.8 to 89.5 ms per second of video
(``python -m appliance.devtools.camera_bench``, docs/benchmarks/camera_thread.md).
"""
from __future__ import annotations

import threading
from fractions import Fraction
from typing import Any

from appliance.clock import NS_PER_S
from appliance.scoring.buffers import FaceSample, RingBuffer


class ClipGrid:
    """Clip slot times: tick ``k`` is at ``ceil(k * 1e9 / fps)`` ns of the monotonic clock, exactly (integers).

    Exact arithmetic because the camera thread and the window builder must agree on every tick, for any frame
    rate (7.5 fps has a period of 133,333,333.3 ns)."""

    def __init__(self, fps: float) -> None:
        if not fps > 0:
            raise ValueError(f"clip frame rate must be > 0, got {fps!r}")
        period = Fraction(NS_PER_S) / Fraction(fps)
        self._num, self._den = period.numerator, period.denominator

    def index_at(self, t_ns: int) -> int:
        """The index of the latest tick at or before ``t_ns``."""
        return (int(t_ns) * self._den) // self._num

    def tick(self, k: int) -> int:
        """The time of tick ``k`` (ns)."""
        return -((-int(k) * self._num) // self._den)

    def slots(self, t_ns: int, n: int) -> list[int]:
        """The ``n`` latest ticks at or before ``t_ns``, oldest first: the slot times of a clip ending at t."""
        last = self.index_at(t_ns)
        return [self.tick(k) for k in range(last - n + 1, last + 1)]

    def tick_in(self, t0_ns: int, t1_ns: int) -> bool:
        """Whether a tick lies in ``[t0_ns, t1_ns)``."""
        return t1_ns > t0_ns and self.tick(self.index_at(t1_ns - 1)) >= t0_ns


class ClipFrames:
    """The camera's frame sink: appends each frame's :class:`FaceSample` to ``buffer``; of the faces, resizes
    the ones a clip slot will take as soon as that is known, and drops the others unresized (module doc).

    The decision for a face waits for the next frame: a grid tick at or after the face and before that frame
    means the face fills the tick's slot (resized now); a newer face with no tick in between supersedes it
    (dropped, naming its successor, so a window that read the buffer just before still finds the newer face);
    a frame without a face decides nothing unless a tick has passed. A window built before the decision
    resizes the face itself (:meth:`appliance.sources.face_crop.FaceCrop.pixels`). Frames arrive from the one
    camera thread; the lock only guards the counters read by other threads.
    """

    def __init__(self, buffer: RingBuffer, grid: ClipGrid) -> None:
        self.buffer = buffer
        self.grid = grid
        self._pending: FaceSample | None = None
        self._lock = threading.Lock()
        self.resized = 0  # faces resized because a slot takes them
        self.dropped = 0  # faces no slot can take, never resized

    def __call__(self, frame: Any, observation: Any) -> None:
        self.add(FaceSample.of(frame, observation))

    def add(self, sample: FaceSample) -> None:
        """Append ``sample`` (refused like any out-of-order item) and decide the face before it."""
        self.buffer.append(sample)
        with self._lock:
            pending = self._pending
            if pending is not None and pending.face is not None:
                if self.grid.tick_in(pending.t_ns, sample.t_ns):
                    if pending.face.state == "pending":
                        self.resized += 1
                    pending.face.pixels()
                    self._pending = None
                elif sample.face is not None:
                    if pending.face.drop(sample.face):
                        self.dropped += 1
                    self._pending = None
            if sample.face is not None:
                self._pending = sample
