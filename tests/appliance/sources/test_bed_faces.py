"""The bed's camera path as the daemon wires it: a real video file through OpenCV, the real face detector and
tracker, and the sink ``wiring.buffer_sinks`` makes. Of a 30 fps camera only the faces a clip slot takes
(8 a second) are resized; the window the builder cuts is made of exactly those, each the tracker's crop of its
own frame."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np

from appliance import wiring
from appliance.scoring.buffers import ModalityBuffers
from appliance.scoring.clip_frames import ClipFrames
from appliance.scoring.windows import WindowBuilder, WindowConfig
from appliance.sources.bed import BedSources, SourceSettings
from appliance.sources.camera import CameraConfig
from appliance.sources.face import FaceConfig, crop_square
from tests.appliance.sources.face_images import rendered_face

FPS = 30.0
SECONDS = 3.0


def face_video(path: Path) -> Path:
    """The synthetic infant's face drifting right by 1 px every 3 frames, MJPG at 30 fps."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (320, 240))
    assert writer.isOpened()
    base = rendered_face(x0=40)
    for i in range(int(FPS * SECONDS)):
        writer.write(np.roll(base, i // 3, axis=1))
    writer.release()
    return path


def test_a_30_fps_camera_has_only_the_faces_a_clip_takes_resized(tmp_path: Path) -> None:
    config = WindowConfig(n_frames=16, frame_fps=8.0)
    buffers = ModalityBuffers()
    builder = WindowBuilder(buffers, config)
    sinks = wiring.buffer_sinks(buffers, clip_grid=builder.grid)
    assert isinstance(sinks.frame, ClipFrames) and sinks.frame.grid is builder.grid
    seen: dict[int, tuple[np.ndarray, tuple[int, int, int, int] | None]] = {}
    lock = threading.Lock()
    clip_frames = sinks.frame

    def keep_and_forward(frame, observation) -> None:  # the test also keeps each frame and box to check crops
        with lock:
            seen[frame.t_ns] = (frame.image, observation.box)
        clip_frames(frame, observation)

    sources = BedSources(SourceSettings(CameraConfig(str(face_video(tmp_path / "face.avi"))), FaceConfig(crop_size=64),
                                        None, None),
                         wiring.Sinks(frame=keep_and_forward)).open()
    try:
        deadline = time.monotonic() + 30
        while not sources.camera.health().ended and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sources.camera.health().ended and sources.sink_errors == 0
    finally:
        sources.close()
    samples = list(buffers.frames)
    faces = [s for s in samples if s.has_face]
    assert len(samples) == FPS * SECONDS and len(faces) >= 0.9 * len(samples)  # the detector sees the face
    span_s = (samples[-1].t_ns - samples[0].t_ns) / 1e9
    states = [s.face.state for s in faces]
    assert clip_frames.resized == states.count("ready") and clip_frames.dropped == states.count("dropped")
    assert states.count("ready") <= span_s * config.frame_fps + 1  # one per tick of the clip grid
    assert states.count("dropped") >= len(faces) - span_s * config.frame_fps - 2
    video = builder.video(samples[-1].t_ns)
    assert video.status.usable  # (16 distinct frames unless the loaded machine stalled the camera > 125 ms)
    margin = FaceConfig().margin
    for crop, t_ns in zip(video.frames, video.times_ns):  # each slot: its own frame's face, as cut on arrival
        image, box = seen[int(t_ns)]
        np.testing.assert_array_equal(crop, crop_square(image, box, margin, 64))
