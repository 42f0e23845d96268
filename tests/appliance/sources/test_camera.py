"""Camera source through the real OpenCV path: the test writes an MJPG .avi and the Camera replays it."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.sources.camera import Camera, CameraConfig, Frame, csi_pipeline
from tests.appliance.sources.source_helpers import level, write_video


class Collector:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.lock = threading.Lock()

    def __call__(self, f: Frame) -> None:
        with self.lock:
            self.frames.append(f)

    def wait(self, n: int, timeout_s: float = 10.0) -> list[Frame]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.frames) >= n:
                    return list(self.frames)
            time.sleep(0.01)
        with self.lock:
            return list(self.frames)


def test_file_is_paced_at_its_fps_and_ends(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.avi", 10, 25.0)
    sink = Collector()
    t_start = time.monotonic_ns()
    cam = Camera(CameraConfig(str(path)), sink).start()
    frames = sink.wait(10)
    deadline = time.monotonic() + 2
    while not cam.health().ended and time.monotonic() < deadline:
        time.sleep(0.01)
    h = cam.health()
    cam.stop()
    assert [level(f) for f in frames] == list(range(10))
    assert [f.index for f in frames] == list(range(10))
    t = np.array([f.t_ns for f in frames])
    assert (np.diff(t) > 0).all()
    # paced at 25 fps, not read at disk speed: frame k is never before k * 40 ms after the start (a busy machine
    # can only make frames late, and pacing on due times lets a late frame be followed by a quick one)
    assert ((t - t_start) / 1e9 >= 0.04 * np.arange(10) - 0.001).all()
    assert np.median(np.diff(t)) / 1e9 == pytest.approx(0.04, abs=0.01)
    assert h.ended and not h.open and h.frames == 10 and h.reopen_count == 0
    assert h.fps_measured == pytest.approx(9 / ((t[-1] - t[0]) / 1e9))  # health's rate is the stamps' rate
    assert frames[0].image.shape == (120, 160, 3) and frames[0].image.dtype == np.uint8


def test_looping_file_and_resize(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.avi", 5, 100.0)
    sink = Collector()
    with Camera(CameraConfig(str(path), loop=True, width=80, height=60), sink) as cam:
        frames = sink.wait(13)
        assert cam.health().open and not cam.health().ended
    assert [level(f) for f in frames[:13]] == [i % 5 for i in range(13)]
    assert frames[0].image.shape == (60, 80, 3)


def test_missing_file_is_retried_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.avi"
    sink = Collector()
    cam = Camera(CameraConfig(str(path), reopen_backoff_s=0.05, reopen_backoff_max_s=0.1), sink).start()
    # wait for the retries themselves, not a fixed time (a busy machine may not have run the thread yet)
    deadline = time.monotonic() + 10
    while cam.health().open_failures < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    h0 = cam.health()
    write_video(tmp_path / "tmp.avi", 3, 100.0).rename(path)
    frames = sink.wait(3)
    cam.stop()
    assert not h0.open and h0.open_failures >= 2 and "not found" in (h0.last_error or "")
    assert h0.last_frame_age_s is None
    assert [level(f) for f in frames] == [0, 1, 2]


def test_watchdog_reopens_after_silence(tmp_path: Path) -> None:
    # Paced at 0.1 fps the file gives 10 s without frames; with a 0.2 s watchdog the source is reopened (the
    # file restarts) long before a second frame could be due, however slowly a busy machine runs the threads.
    path = write_video(tmp_path / "slow.avi", 4, 2.0)
    sink = Collector()
    cam = Camera(CameraConfig(str(path), fps=0.1, watchdog_s=0.2), sink).start()
    frames = sink.wait(3, timeout_s=5)
    h = cam.health()
    cam.stop()
    assert h.reopen_count >= 2
    assert "no frame" in (h.last_error or "")
    assert [level(f) for f in frames[:3]] == [0, 0, 0]  # each reopen starts the file again
    assert not cam._watchdog.is_alive() and not any(t.is_alive() for t in cam._threads)


def test_kind_resolution_and_errors() -> None:
    assert CameraConfig(0).resolved_kind() == "device"
    assert CameraConfig("/dev/video2").resolved_kind() == "device"
    assert CameraConfig(csi_pipeline(0, 1280, 720, 30)).resolved_kind() == "gstreamer"
    assert CameraConfig("bed.avi").resolved_kind() == "file"
    with pytest.raises(ValueError, match="kind"):
        CameraConfig("x", kind="usb").resolved_kind()
    with pytest.raises(ValueError, match="watchdog_s"):
        Camera(CameraConfig("x.avi", watchdog_s=0), lambda f: None)
