"""The fast face-clip pre-processing (crop first, reused buffers, lookup-table normalisation) gives exactly
the numbers of the straightforward recipe it replaced, and allocates one output per clip."""

from __future__ import annotations

import dataclasses
import tracemalloc

import cv2
import numpy as np
import pytest

from models.bench import synthetic_raw_window
from models.configs import VideoConfig, get_config, tiny_config
from models.features.inputs import model_inputs
from models.features.video import clip_array, preprocess_clip, sample_frame_indices


def reference_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """The resize rule written out plainly: area averaging to shrink, bilinear to enlarge."""
    shrink = frame.shape[0] >= size and frame.shape[1] >= size
    return cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def reference_clip(frames: np.ndarray, cfg: VideoConfig) -> np.ndarray:
    """The recipe before the speed-up, kept verbatim as the oracle: pick, resize every frame, normalise per pixel."""
    size = cfg.crop_size
    picked = frames[sample_frame_indices(frames.shape[0], cfg.frames)]
    out = np.empty((cfg.frames, size, size, 3), dtype=np.float32)
    for i, frame in enumerate(picked):
        if frame.shape[:2] == (size, size):
            out[i] = frame
        else:
            out[i] = reference_resize(frame, size)
    out *= np.float32(cfg.pixel_scale / 255.0)
    out -= np.asarray(cfg.mean, dtype=np.float32)
    out /= np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(3, 0, 1, 2))


MMACTION = VideoConfig(frames=5, crop_size=24, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), pixel_scale=255.0)


@pytest.mark.parametrize("cfg", [tiny_config().video, MMACTION], ids=["kinetics-scale", "mmaction2-scale"])
@pytest.mark.parametrize("shape", [(7, 90, 160, 3), (20, 32, 32, 3), (3, 24, 24, 3), (9, 61, 47, 3), (4, 100, 77, 3),
                                   (3, 16, 30, 3)])
def test_bit_identical_to_the_reference_recipe(cfg: VideoConfig, shape: tuple[int, ...]) -> None:
    frames = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    np.testing.assert_array_equal(clip_array(frames, cfg), reference_clip(frames, cfg))
    np.testing.assert_array_equal(preprocess_clip(frames, cfg).numpy(), reference_clip(frames, cfg))


def test_box_crops_first_and_bgr_is_swapped_on_the_crop() -> None:
    cfg = tiny_config().video
    frames = np.random.default_rng(3).integers(0, 256, size=(10, 120, 200, 3), dtype=np.uint8)
    box = (70, 10, 100, 100)
    crop = frames[:, 10:110, 70:170]
    np.testing.assert_array_equal(clip_array(frames, cfg, box=box), reference_clip(crop, cfg))
    np.testing.assert_array_equal(clip_array(frames[..., ::-1].copy(), cfg, box=box, bgr=True), reference_clip(crop, cfg))
    # a box reaching past the frame is clipped to it; one wholly outside is refused
    np.testing.assert_array_equal(clip_array(frames, cfg, box=(150, -20, 100, 100)), reference_clip(frames[:, 0:80, 150:200], cfg))
    with pytest.raises(ValueError, match="outside the 200x120 frames"):
        clip_array(frames, cfg, box=(300, 0, 10, 10))


def test_model_inputs_with_a_face_box_equal_pre_cropped_rgb_frames() -> None:
    cfg = tiny_config()
    window = synthetic_raw_window(cfg, camera=(160, 120), seed=5)
    x, y, w, h = window.face_box
    assert window.frames_bgr and (w, h) == (120, 120)
    cropped = dataclasses.replace(window, frames=window.frames[:, y:y + h, x:x + w, ::-1].copy(), face_box=None,
                                  frames_bgr=False)
    a, b = model_inputs(window, cfg), model_inputs(cropped, cfg)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_one_allocation_per_clip_not_per_frame() -> None:
    cfg = get_config("full").video
    frames = np.random.default_rng(0).integers(0, 256, size=(16, 240, 320, 3), dtype=np.uint8)
    clip_array(frames, cfg, box=(40, 0, 240, 240))  # warm: the reused buffers exist
    tracemalloc.start()
    try:
        clip_array(frames, cfg, box=(40, 0, 240, 240))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    output = 3 * cfg.frames * cfg.crop_size * cfg.crop_size * 4
    assert peak < output * 1.1, f"peak {peak} bytes for a {output}-byte clip"


def _scene(side: int, seed: int) -> np.ndarray:
    """A camera-like image: smooth shading plus fine texture."""
    rng = np.random.default_rng(seed)
    coarse = cv2.resize(rng.uniform(40, 220, size=(12, 12, 3)).astype(np.float32), (side, side), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 25, size=(side, side, 3)).astype(np.float32), (0, 0), 1.5)
    return np.clip(coarse + fine, 0, 255).astype(np.uint8)


def test_the_camera_threads_crops_are_the_clips_resize() -> None:
    """A device hands the scoring thread face crops cut and resized in the camera thread; a clip made from them
    equals the clip made from the raw frames with the same box (training's path), for a face larger than the
    network's crop and for one smaller (enlarged: bilinear on both paths; the camera thread used to enlarge
    bilinearly while training enlarged with INTER_AREA)."""
    from appliance.sources.face import crop_square

    cfg = get_config("full").video
    frames = np.stack([_scene(720, s) for s in range(3)])
    frames = np.concatenate([frames, np.zeros((3, 720, 560, 3), dtype=np.uint8)], axis=2)  # 1280 x 720
    for box in ((300, 0, 720, 720), (500, 200, 300, 300), (600, 300, 150, 150)):  # shrunk, shrunk, enlarged
        crops = np.stack([crop_square(f, box, 0.0, cfg.crop_size) for f in frames])
        np.testing.assert_array_equal(clip_array(crops, cfg), clip_array(frames, cfg, box=box), err_msg=str(box))
