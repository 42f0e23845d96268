"""Real inputs for the source tests: MJPG video files through OpenCV and bare pty pairs (shared by
test_camera.py, test_supervise.py and monitor/test_reader_pty.py)."""
from __future__ import annotations

import contextlib
import os
import tty
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from appliance.sources.camera import Frame


def write_video(path: Path, n: int, fps: float, size: tuple[int, int] = (160, 120)) -> Path:
    """Frame i is a flat grey of level 10*i + 20 (MJPG keeps flat levels within a couple of units)."""
    w, h = size
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((h, w, 3), 10 * i + 20, np.uint8))
    vw.release()
    return path


def level(frame: Frame) -> int:
    """The index i of a :func:`write_video` frame, read back from its grey level."""
    return int(round((float(frame.image.mean()) - 20) / 10))


@contextlib.contextmanager
def raw_pty() -> Iterator[tuple[int, str]]:
    """A bare pty pair: the test writes exactly the bytes a monitor would, when it wants (master fd, path)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)
