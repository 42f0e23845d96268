"""The camera thread resizes only the faces a clip takes: the clip grid's exact ticks, the frame sink's
decisions, and windows that are the same, pixel for pixel and stamp for stamp, as when every face was resized
on arrival -- for windows built after the frames, between them, and while a newer face supersedes the one a
window has just picked."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from appliance.scoring.buffers import FaceSample, ModalityBuffers, RingBuffer
from appliance.scoring.clip_frames import ClipFrames, ClipGrid
from appliance.scoring.windows import WindowBuilder, WindowConfig
from appliance.sources.camera import Frame
from appliance.sources.face import FaceObservation, crop_square
from appliance.sources.face_crop import FaceCrop

S = 10**9
T0 = 1_000 * S + 37_000_001  # deliberately off every grid


@pytest.mark.parametrize("fps", [8.0, 7.5, 30.0, 1 / 3, 0.7])
def test_grid_ticks_are_exact_and_agree_with_index_at(fps: float) -> None:
    grid = ClipGrid(fps)
    period = Fraction(S) / Fraction(fps)
    rng = np.random.default_rng(1)
    for t in [0, 1, T0, *rng.integers(0, 10**15, 200).tolist()]:
        k = grid.index_at(t)
        tick = grid.tick(k)
        assert tick <= t < grid.tick(k + 1)  # the latest tick at or before t
        assert tick == -((-k * period.numerator) // period.denominator)  # ceil(k * period), exactly
        slots = grid.slots(t, 16)
        assert len(slots) == 16 and slots[-1] == tick and all(b > a for a, b in zip(slots, slots[1:]))
        assert grid.tick_in(tick, tick + 1) and not grid.tick_in(tick + 1, grid.tick(k + 1))
        assert not grid.tick_in(t, t)  # an empty interval holds no tick
    with pytest.raises(ValueError, match="frame rate"):
        ClipGrid(0.0)


def camera_frames(n: int, fps: float, size: tuple[int, int] = (96, 160), t0: int = T0) -> list[Frame]:
    """Frames whose pixels encode their index (every pixel differs between frames)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (size[0], size[1], 3), dtype=np.uint8)
    return [Frame(t0 + int(i * S / fps), (base + i % 50).astype(np.uint8), i) for i in range(n)]


ROI = (20, 10, 72, 72)


def roi_observation(frame: Frame, face: bool = True) -> FaceObservation:
    """What the tracker hands over in fixed-ROI mode: the region as a pending crop (or no face)."""
    if not face:
        return FaceObservation(frame.t_ns, None, None, "no face detected", frame_index=frame.index)
    x, y, w, h = ROI
    return FaceObservation(frame.t_ns, FaceCrop(frame.t_ns, 32, frame.image[y:y + h, x:x + w]), ROI, "fixed roi",
                           True, frame.index)


def eager_observation(frame: Frame, face: bool = True) -> FaceObservation:
    """The same face resized on arrival, as the tracker did before."""
    if not face:
        return FaceObservation(frame.t_ns, None, None, "no face detected", frame_index=frame.index)
    return FaceObservation(frame.t_ns, crop_square(frame.image, ROI, 0.0, 32), ROI, "fixed roi", True, frame.index)


def assert_same_video(a, b) -> None:
    assert a.status == b.status
    if b.frames is None:
        assert a.frames is None
        return
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.times_ns, b.times_ns)
    assert (a.distinct, a.face_fraction, a.fill, a.face_px) == (b.distinct, b.face_fraction, b.fill, b.face_px)


def has_face(i: int) -> bool:
    return not (40 <= i < 47 or i % 13 == 0)  # a hand over the face for a while, and some blinks


@pytest.mark.parametrize("camera_fps", [30.0, 25.0, 8.0, 5.0])
def test_sink_resizes_only_the_faces_a_slot_takes_and_windows_match_eager_resizing(camera_fps: float) -> None:
    config = WindowConfig(n_frames=16, frame_fps=8.0)
    lazy, eager = ModalityBuffers(), ModalityBuffers()
    lazy_builder, eager_builder = WindowBuilder(lazy, config), WindowBuilder(eager, config)
    sink = ClipFrames(lazy.frames, lazy_builder.grid)
    frames = camera_frames(int(6 * camera_fps), camera_fps)
    rng = np.random.default_rng(2)
    between = 0
    for k, frame in enumerate(frames):
        sink(frame, roi_observation(frame, has_face(k)))
        eager.frames.append(FaceSample.of(frame, eager_observation(frame, has_face(k))))
        if k % 7 == 3:  # a window built between frames, at an arbitrary time before the next one
            t = frame.t_ns + int(rng.integers(0, int(S / camera_fps)))
            video = lazy_builder.video(t)
            assert_same_video(video, eager_builder.video(t))
            between += video.frames is not None and video.fill == 0.0
    for t in rng.integers(frames[20].t_ns, frames[-1].t_ns + S, 60).tolist():  # windows built afterwards
        assert_same_video(lazy_builder.video(int(t)), eager_builder.video(int(t)))
    ticks = (frames[-1].t_ns - frames[0].t_ns) / S * config.frame_fps + 1
    faces = sum(has_face(k) for k in range(len(frames)))
    states = [s.face.state for s in lazy.frames if s.face is not None]
    assert len(states) == faces and states.count("pending") <= 1  # only the newest face awaits its decision
    assert states.count("dropped") == sink.dropped and sink.resized <= states.count("ready")
    # resized: one face per tick, plus one per window built between frames whose slots all precede its faces
    # (it shows the newest face, resizing it before its decision); all other faces are dropped, never resized
    assert states.count("ready") <= ticks + between
    if camera_fps > config.frame_fps:
        assert sink.dropped >= faces - ticks - between - 1
    else:  # a camera no faster than the grid: every face fills a slot
        assert sink.dropped <= 1


class RacingFrames:
    """A frames buffer whose reads let the camera thread append one more frame right after the snapshot:
    the interleaving where a window has picked a face that the sink then supersedes and drops."""

    def __init__(self, buffer: RingBuffer, late: list) -> None:
        self.buffer, self.late = buffer, late
        self.max_span_ns = buffer.max_span_ns

    def between(self, t0: int, t1: int) -> list:
        snapshot = self.buffer.between(t0, t1)
        while self.late:
            self.late.pop(0)()
        return snapshot


def test_a_face_dropped_after_the_window_read_the_buffer_stands_for_its_successor() -> None:
    config = WindowConfig(n_frames=4, frame_fps=8.0)
    buffers = ModalityBuffers()
    builder = WindowBuilder(buffers, config)
    sink = ClipFrames(buffers.frames, builder.grid)
    grid = builder.grid
    k = grid.index_at(T0) + 1
    # faces at 10 ms intervals just before tick k: each one supersedes the one before (no tick in between)
    stamps = [grid.tick(k) - 40_000_000 + 10_000_000 * i for i in range(4)]
    frames = [Frame(t, np.full((48, 48, 3), 10 * i, np.uint8), i) for i, t in enumerate(stamps)]
    faces = [FaceObservation(f.t_ns, FaceCrop(f.t_ns, 16, f.image), (0, 0, 48, 48), "fixed roi", True, f.index)
             for f in frames]
    for f, o in zip(frames[:3], faces[:3]):
        sink(f, o)
    assert [o.face.state for o in faces[:3]] == ["dropped", "dropped", "pending"]
    # the window at tick k reads [.., f2]; before it resizes f2, frame 3 arrives and supersedes f2
    buffers.frames = RacingFrames(buffers.frames, [lambda: sink(frames[3], faces[3])])
    video = builder.video(grid.tick(k))
    assert faces[2].face.state == "dropped" and faces[2].face.successor is faces[3].face
    assert video.times_ns[-1] == stamps[3]  # the newest face at or before the slot, as a fresh read gives
    np.testing.assert_array_equal(video.frames[-1], np.full((16, 16, 3), 30, np.uint8))
    assert faces[3].face.state == "ready"  # resized by the window, not the camera thread


def test_face_crop_states_and_errors() -> None:
    region = np.zeros((30, 30, 3), np.uint8)
    a, b = FaceCrop(1, 10, region), FaceCrop(2, 10, region)
    assert a.drop(b) and a.state == "dropped" and a.pixels() is None and a.resolve() is b
    assert b.pixels().shape == (10, 10, 3) and not b.drop(a)  # a resized crop is kept: someone needed it
    with pytest.raises(ValueError, match="supersede itself"):
        b.drop(b)
    with pytest.raises(ValueError, match="region must be"):
        FaceCrop(1, 10, np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="region must be"):
        FaceCrop(1, 10, np.zeros((4, 4, 3), np.float32))
