"""The quality gate on video that is no face: a 1x1-pixel camera stream and a flat (uniform) picture.

Each is a real video file written here with ``cv2.VideoWriter`` and played by the appliance's Camera through
OpenCV (the 1x1 stream upscaled by the camera to 64x64, as a configured width/height does). A stand-in
detector claims a face filling the frame -- what a fooled detector or a fixed ROI squeezed into any frame
does -- so the crops reach the frames buffer (``FaceSample``, with the face's size in the camera's own
pixels), the window builder and ``prepare``. The gate must refuse both with a flag, so no score uses video;
a textured stream through the same path is used (the control).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import cv2
import jsonschema
import numpy as np
import pytest

from appliance.mqtt import messages
from appliance.mqtt.publisher import Publisher, PublisherConfig
from appliance.scoring.buffers import FaceSample, ModalityBuffers, RRInterval, VitalsSample
from appliance.scoring.calibration_stage import CalibrationStage
from appliance.scoring.pipeline import PipelineConfig, ScoringPipeline, prepare
from appliance.scoring.quality import QualityConfig, assess, crop_texture
from appliance.scoring.windows import WindowBuilder
from appliance.sources.camera import Camera, CameraConfig, Frame
from appliance.sources.face import FaceObservation, crop_square
from appliance.sources.microphone import AudioPeriod
from models.configs import tiny_config

S = 10**9
SR = 16000
CROP = 64


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def claimed_face(frame: Frame) -> FaceObservation:
    """A detector fooled into 'a face filling the frame' (the crop is cut and resized as the tracker does)."""
    h, w = frame.image.shape[:2]
    box = (0, 0, w, h)
    return FaceObservation(frame.t_ns, crop_square(frame.image, box, 0.0, CROP), box, "detected", True, frame.index)


def capture(videos: dict[str, tuple[Path, int | None]]) -> dict[str, tuple[ModalityBuffers, int]]:
    """Play every video through its own Camera at the file's 30 fps, at once, until the window builder finds
    each buffer's video window full and fresh (how long that takes depends on the machine's load, what the
    window holds does not); the frame sink is the daemon's: ``FaceSample.of(frame, observation)``. Returns each
    buffer with the time its window was found full (frames arriving later lie outside that window)."""
    buffers = {name: ModalityBuffers() for name in videos}
    full_at: dict[str, int] = {}
    cams = []
    for name, (path, size) in videos.items():
        def sink(frame: Frame, b: ModalityBuffers = buffers[name]) -> None:
            b.frames.append(FaceSample.of(frame, claimed_face(frame)))
        cams.append(Camera(CameraConfig(str(path), loop=True, width=size, height=size), sink).start())

    def full(name: str) -> bool:
        newest = buffers[name].frames.latest()
        if name not in full_at and newest is not None and WindowBuilder(buffers[name]).video(newest.t_ns).status.usable:
            full_at[name] = newest.t_ns
        return name in full_at

    deadline = time.monotonic() + 20
    try:
        while not all([full(name) for name in buffers]) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for cam in cams:
            cam.stop()
    assert set(full_at) == set(buffers), f"video windows never filled: {set(buffers) - set(full_at)}"
    return {name: (b, full_at[name]) for name, b in buffers.items()}


def add_audio_and_vitals(b: ModalityBuffers, t_end: int) -> None:
    """Fresh audio (5 s of noise) and 35 s of 1 Hz vitals with RR, so that a window has something to score."""
    rng = np.random.default_rng(5)
    x = (rng.normal(0, 0.05, 5 * SR) * 32767).clip(-32768, 32767).astype(np.int16)
    for k in range(0, x.size - 511, 512):
        b.audio.append(AudioPeriod(t_end - 5 * S + (k + 511) * S // SR, x[k:k + 512], SR, k // 512))
    for s in range(70):
        t = t_end - (69 - s) * S // 2
        if s % 2 == 0:
            b.vitals.append(VitalsSample(t, hr_bpm=140.0 + s % 3, spo2_pct=97.0))
        b.rr.append(RRInterval(t, rr_ms=420.0 + 5 * (s % 4)))


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[ModalityBuffers, int]]:
    d = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    textured = [cv2.GaussianBlur(rng.integers(0, 256, (CROP, CROP, 3), dtype=np.uint8), (3, 3), 0)
                for _ in range(30)]
    buffers = capture({
        "one_pixel": (write_video(d / "1x1.avi", [np.full((1, 1, 3), 90 + i, np.uint8) for i in range(30)]), CROP),
        "flat": (write_video(d / "flat.avi", [np.full((CROP, CROP, 3), 128, np.uint8)] * 30), None),
        "textured": (write_video(d / "textured.avi", textured), None),
    })
    for b, t in buffers.values():
        add_audio_and_vitals(b, t)
    return buffers


def window_of(played: tuple[ModalityBuffers, int]) -> Any:
    b, t = played
    return WindowBuilder(b).build(t)


def test_a_one_pixel_stream_is_refused_as_too_small_a_face(played: dict[str, tuple[ModalityBuffers, int]]) -> None:
    w = window_of(played["one_pixel"])
    assert w.video.frames.shape[1:] == (CROP, CROP, 3)  # the camera upscaled it: it looks like a face crop ...
    assert w.video.status.usable and w.video.face_px == pytest.approx(1.0)  # ... of one real pixel
    prepared = prepare(w, tiny_config())
    assert not prepared.used["video"] and prepared.used["audio"] and prepared.used["vitals"]
    assert "video_face_too_small" in prepared.flags
    assert "1 px in the camera's frame" in prepared.verdict.reasons["video"]


def test_a_flat_picture_is_refused_as_flat(played: dict[str, tuple[ModalityBuffers, int]]) -> None:
    w = window_of(played["flat"])
    assert w.video.status.usable and w.video.face_px == pytest.approx(CROP)  # big enough ...
    contrast, detail = crop_texture(w.video.frames[-1])
    assert contrast < 2 and detail < 1  # ... but nothing in it
    prepared = prepare(w, tiny_config())
    assert not prepared.used["video"] and "video_flat" in prepared.flags
    assert prepared.verdict.reasons["video"].startswith("flat picture")


def test_a_textured_picture_of_the_same_size_passes(played: dict[str, tuple[ModalityBuffers, int]]) -> None:
    prepared = prepare(window_of(played["textured"]), tiny_config())
    assert prepared.used == {"video": True, "audio": True, "vitals": True}
    assert not {"video_flat", "video_face_too_small"} & set(prepared.flags)


def test_the_limits_are_the_configs(played: dict[str, tuple[ModalityBuffers, int]]) -> None:
    """min_face_px / min_face_contrast / min_face_detail decide: at 0 the same windows pass."""
    lenient = QualityConfig(min_face_px=0, min_face_contrast=0, min_face_detail=0)
    assert assess(window_of(played["one_pixel"]), lenient).presence["video"]
    assert assess(window_of(played["flat"]), lenient).presence["video"]
    with pytest.raises(ValueError, match="min_face_px"):
        QualityConfig(min_face_px=float("nan"))


class _TinyEngines:
    backend, model_version = "torch", "tiny-test"

    def __init__(self) -> None:
        from models.engines.torch import TorchEngine
        from models.estimator import INPUT_NAMES, OUTPUT_NAMES, create_pain_estimator

        self.engine = TorchEngine(create_pain_estimator(tiny_config()), INPUT_NAMES, OUTPUT_NAMES)

    def run(self, inputs: Mapping[str, np.ndarray]) -> Any:
        return self.engine.run(inputs)


def test_the_published_score_does_not_use_the_one_pixel_video(played: dict[str, tuple[ModalityBuffers, int]],
                                                              tmp_path: Path) -> None:
    b, t = played["one_pixel"]
    pub = Publisher(PublisherConfig(host="127.0.0.1", site="s", bed="b1", device_id="dev-1",
                                    outbox_path=tmp_path / "outbox.sqlite3"))
    try:
        pipe = ScoringPipeline(WindowBuilder(b), _TinyEngines(), CalibrationStage(None), pub,
                               model_config=tiny_config(), config=PipelineConfig())
        result = pipe.score_once(t)
    finally:
        pub.outbox.close()
    assert result.kind == "score", result.detail
    msg = result.message
    jsonschema.validate(msg, messages.SCORE_SCHEMA)
    assert msg["modalities"]["video"] == {**msg["modalities"]["video"], "used": False, "weight": 0.0}
    assert "video_face_too_small" in msg["quality_flags"]
