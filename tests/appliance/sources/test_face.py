"""Face tracker through real detectors: honest 'no face' on faceless images, a face is found, tracked, kept
through a few missed detections and then dropped; the fixed-ROI mode crops exactly its region while the
detector finds a face inside it, and a region beyond the frame is refused naming the key and the frame size."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from appliance.sources.face import FaceConfig, FaceTracker, crop_square, roi_error, square_box
from tests.appliance.sources.face_images import SKIN, drawn_face, faceless, frame, rendered_face


@pytest.mark.parametrize("detector", ["centerface", "haar"])
def test_no_face_is_reported_honestly(detector: str) -> None:
    tr = FaceTracker(FaceConfig(detector=detector, detect_every=1))
    assert tr.detector_name == detector and tr.detector_fallback is None
    for i, img in enumerate(faceless()):
        obs = tr.process(frame(img, i))
        assert obs.crop is None and obs.box is None and not obs.has_face
        assert obs.reason == "no face detected" and obs.t_ns == 1_000_000 * i


def test_the_default_detector_finds_the_rendered_face_and_crops_it() -> None:
    tr = FaceTracker(FaceConfig(crop_size=112))
    assert tr.detector_name == "centerface"
    obs = tr.process(frame(rendered_face(x0=60), 0))
    assert obs.detected and obs.reason == "detected"
    x, y, w, h = obs.box  # the face's centre: x 60 + 112, y 8 + ~0.55 * 224
    assert abs(x + w / 2 - 172) < 20 and abs(y + h / 2 - 133) < 25 and 90 < h < 180
    assert obs.crop.shape == (112, 112, 3) and obs.crop.dtype == np.uint8


def test_haar_finds_the_drawn_face_and_crops_it() -> None:
    tr = FaceTracker(FaceConfig(detector="haar", crop_size=112))
    obs = tr.process(frame(drawn_face(cx=300, cy=250), 0))
    assert obs.detected and obs.reason == "detected"
    x, y, w, h = obs.box
    assert abs(x + w / 2 - 300) < 25 and abs(y + h / 2 - 250) < 35
    assert obs.crop.shape == (112, 112, 3) and obs.crop.dtype == np.uint8
    centre = obs.crop[40:72, 40:72].reshape(-1, 3).mean(axis=0)
    assert np.abs(centre - np.array(SKIN)).max() < 45  # the crop shows the face, not the background


def test_tracks_between_detections_and_drops_the_face_at_the_first_miss_without_tolerance() -> None:
    k = 3
    tr = FaceTracker(FaceConfig(detector="haar", detect_every=k, smoothing=0.5, max_missed=0))
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


def test_a_few_missed_detections_keep_the_track_then_it_is_dropped() -> None:
    tr = FaceTracker(FaceConfig(detector="haar", detect_every=1, max_missed=2))
    assert tr.process(frame(drawn_face(), 0)).reason == "detected"
    empty = faceless()[0]
    kept = [tr.process(frame(empty, 1 + j)) for j in range(2)]  # two misses: tolerated
    assert [o.reason for o in kept] == ["tracked", "tracked"] and all(o.crop is not None for o in kept)
    assert tr.process(frame(drawn_face(), 3)).reason == "detected"  # found again: the count starts over
    seen = [tr.process(frame(empty, 4 + j)).reason for j in range(3)]
    assert seen == ["tracked", "tracked", "no face detected"]  # the third miss in a row drops it
    assert tr.process(frame(empty, 7)).crop is None


def test_fixed_roi_crops_exactly_its_region_while_a_face_is_inside() -> None:
    img = rendered_face(x0=60)  # face in x 60..284 of a 320 x 240 frame
    roi = (40, 0, 240, 240)
    tr = FaceTracker(FaceConfig(roi=roi, crop_size=60, detect_every=1, max_missed=0))
    assert tr.mode == "roi"
    obs = tr.process(frame(img, 0))
    assert obs.reason == "fixed roi" and obs.detected and obs.box == roi
    # handed over unresized (the frame sink resizes only what a clip takes), then resized exactly as before
    assert obs.has_face and obs.face.state == "pending" and obs.face.shape == (60, 60, 3)
    np.testing.assert_array_equal(obs.crop, crop_square(img, roi, 0.0, 60))
    assert obs.face.state == "ready" and obs.crop is obs.crop  # resized once
    # the same region on a faceless scene: the detector finds nothing inside it, so there is no crop
    wall = FaceTracker(FaceConfig(roi=roi, detect_every=1, max_missed=0))
    for i, empty in enumerate(faceless()):
        obs = wall.process(frame(empty[:240, :320], i))
        assert obs.crop is None and obs.reason == "no face in the fixed roi"
    # a region beside the face (only background) is no face either
    beside = FaceTracker(FaceConfig(roi=(0, 0, 60, 60), detect_every=1, max_missed=0))
    assert beside.process(frame(img, 0)).crop is None


def test_fixed_roi_beyond_the_frame_is_refused_naming_the_key_and_the_frame_size(
        caplog: pytest.LogCaptureFixture) -> None:
    tr = FaceTracker(FaceConfig(roi=(200, 100, 200, 200), detect_every=1))
    img = rendered_face()
    with caplog.at_level(logging.ERROR, logger="appliance.sources.face"):
        seen = [tr.process(frame(img, i)) for i in range(3)]
    assert all(o.crop is None for o in seen)
    reason = seen[0].reason
    assert "camera.face_roi [200, 100, 200, 200]" in reason and "320x240 frame" in reason
    assert tr.config_error == reason
    errors = [r for r in caplog.records if "camera.face_roi" in r.getMessage()]
    assert len(errors) == 1, "logged once per frame size, not once per frame"
    # the camera reopens at a size the region fits: crops again
    big = cv2.resize(img, (640, 480))
    assert tr.process(frame(big, 3)).crop is not None and tr.config_error is None
    assert roi_error((0, 0, 320, 240), 320, 240) is None and roi_error((0, 0, 321, 240), 320, 240)


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
    with pytest.raises(ValueError, match="detector"):
        FaceConfig(detector="mtcnn")
    with pytest.raises(ValueError, match="max_missed"):
        FaceConfig(max_missed=-1)
