"""The camera-thread bench runs the device's tracker and frame sink on synthetic frames and counts what they do:
a face resized on every frame before, one per clip slot now, none for tracking alone (no timing asserts)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.devtools.camera_bench import MODES, face_roi, main, synthetic_frames


def test_frames_have_the_face_in_the_region_and_differ() -> None:
    frames = synthetic_frames(4, 200, camera=(320, 240))
    assert all(f.dtype == np.uint8 and f.shape == (240, 320, 3) for f in frames)
    assert face_roi(200, (320, 240)) == (60, 20, 200, 200) and face_roi(900, (320, 240))[2] == 240
    assert not np.array_equal(frames[0], frames[1])


def test_the_bench_counts_the_resizes_of_each_way_of_handling_frames(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path), "--seconds", "2", "--face", "240", "--repeats", "1"]) == 0
    result = json.loads((tmp_path / "camera_thread.json").read_text())
    per_s = result["faces_resized_per_s"]
    assert per_s["tracking only"] == 0.0
    assert per_s["every face resized"] == pytest.approx(30.0)  # the detector finds the face in every frame
    assert 7.0 <= per_s["clip slots only"] <= 8.5  # one face per 8-fps clip tick
    assert set(result["cpu_ms_per_video_s"]) == set(MODES) and all(v > 0 for v in result["cpu_ms_per_video_s"].values())
    text = (tmp_path / "camera_thread.md").read_text()
    assert "| every face resized |" in text and "240 px" in text
    png = cv2.imread(str(tmp_path / "camera_thread.png"))
    assert png is not None and png.std() > 10
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--face", "8"])
    assert "--face >= 16" in capsys.readouterr().err
