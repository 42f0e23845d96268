"""Face tracker through the real Haar cascade: honest 'no face' on faceless images, a drawn face is found,
tracked and dropped, and the fixed-ROI mode cuts exactly its region."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from appliance.sources.camera import Frame
from appliance.sources.face import FaceConfig, FaceTracker, crop_square, square_box

SKIN = (150, 180, 220)


def drawn_face(cx: int = 320, cy: int = 240, s: float = 0.8, h: int = 480, w: int = 640) -> np.ndarray:
    """A schematic face (skin ellipse, brows, eyes, nose, mouth, blurred) that the frontal cascade accepts."""
    img = np.full((h, w, 3), 90, np.uint8)
    cv2.ellipse(img, (cx, cy), (int(80 * s), int(105 * s)), 0, 0, 360, SKIN, -1)
    for dx in (-1, 1):
        cv2.ellipse(img, (cx + dx * int(35 * s), cy - int(40 * s)), (int(22 * s), int(6 * s)), 0, 0, 360,
                    (40, 40, 60), -1)
        cv2.ellipse(img, (cx + dx * int(35 * s), cy - int(20 * s)), (int(16 * s), int(9 * s)), 0, 0, 360,
                    (30, 30, 30), -1)
    cv2.ellipse(img, (cx, cy + int(20 * s)), (int(10 * s), int(18 * s)), 0, 0, 360, (120, 150, 190), -1)
    cv2.ellipse(img, (cx, cy + int(55 * s)), (int(30 * s), int(9 * s)), 0, 0, 360, (60, 60, 140), -1)
    return cv2.GaussianBlur(img, (0, 0), 3 * s)


def faceless() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    grad = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
    return [np.full((480, 640, 3), 120, np.uint8), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
            cv2.cvtColor(grad, cv2.COLOR_GRAY2BGR)]


def frame(img: np.ndarray, i: int) -> Frame:
    return Frame(t_ns=1_000_000 * i, image=img, index=i)


def test_no_face_is_reported_honestly() -> None:
    tr = FaceTracker(FaceConfig(detect_every=1))
    for i, img in enumerate(faceless()):
        obs = tr.process(frame(img, i))
        assert obs.crop is None and obs.box is None and not obs.has_face
        assert obs.reason == "no face detected" and obs.t_ns == 1_000_000 * i


def test_drawn_face_is_detected_and_cropped() -> None:
    tr = FaceTracker(FaceConfig(crop_size=112))
    obs = tr.process(frame(drawn_face(cx=300, cy=250), 0))
    assert obs.detected and obs.reason == "detected"
    x, y, w, h = obs.box
    assert abs(x + w / 2 - 300) < 25 and abs(y + h / 2 - 250) < 35
    assert obs.crop.shape == (112, 112, 3) and obs.crop.dtype == np.uint8
    centre = obs.crop[40:72, 40:72].reshape(-1, 3).mean(axis=0)
    assert np.abs(centre - np.array(SKIN)).max() < 45  # the crop shows the face, not the background


def test_tracks_between_detections_and_drops_the_face_when_it_leaves() -> None:
    k = 3
    tr = FaceTracker(FaceConfig(detect_every=k, smoothing=0.5))
    reasons, boxes = [], []
    for i in range(6):  # the face drifts right by 20 px per frame
        obs = tr.process(frame(drawn_face(cx=250 + 20 * i), i))
        reasons.append(obs.reason)
        boxes.append(obs.box)
        assert obs.crop is not None
    assert reasons == ["detected", "tracked", "tracked", "detected", "tracked", "tracked"]
    # smoothing: after re-detection the box moved toward the face, by half the way
    assert boxes[1] == boxes[0] and boxes[3][0] > boxes[0][0]
    assert boxes[3][0] - boxes[0][0] == pytest.approx(0.5 * 60, abs=12)
    empty = faceless()[0]
    dropped = [tr.process(frame(empty, 6 + j)) for j in range(k)]
    # the next detection (within k frames) reports no face; afterwards nothing is returned as a face
    assert dropped[-1].crop is None and dropped[-1].reason == "no face detected"
    assert tr.process(frame(empty, 10)).crop is None


def test_fixed_roi_mode_crops_exactly_its_region() -> None:
    img = np.zeros((120, 160, 3), np.uint8)
    img[20:80, 50:110] = 200
    tr = FaceTracker(FaceConfig(roi=(50, 20, 60, 60), crop_size=30))
    assert tr.mode == "roi"
    for img_i in (img, faceless()[1][:120, :160]):
        obs = tr.process(frame(img_i, 0))
        assert obs.reason == "fixed roi" and obs.crop.shape == (30, 30, 3)
    np.testing.assert_array_equal(tr.process(frame(img, 1)).crop, np.full((30, 30, 3), 200, np.uint8))


def test_square_box_stays_inside_the_frame() -> None:
    assert square_box((0, 0, 40, 20), 0.25, 200, 100) == (0, 0, 60, 60)  # shifted, not cut
    assert square_box((150, 60, 40, 40), 0.0, 200, 100) == (150, 60, 40, 40)
    assert square_box((10, 10, 300, 300), 0.5, 200, 100) == (100, 0, 100, 100)  # side cut to the frame
    img = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    assert crop_square(img, (90, 40, 20, 20), 0.0, 20).tolist() == img[40:60, 90:110].tolist()


def test_bad_input_and_config() -> None:
    tr = FaceTracker(FaceConfig(roi=(0, 0, 10, 10)))
    assert tr.process(frame(np.zeros((10, 10, 3), np.float32), 0)).reason == "invalid frame"
    with pytest.raises(ValueError, match="detect_every"):
        FaceConfig(detect_every=0)
    with pytest.raises(ValueError, match="roi"):
        FaceConfig(roi=(0, 0, 0, 10))
