"""Camera source over ``cv2.VideoCapture``: a USB/V4L2 device, a Jetson CSI GStreamer pipeline, or a video
file replayed at its own frame rate (the simulated bed).

Why a thread and a watchdog: ``VideoCapture.read`` blocks, and a USB camera that is unplugged or a CSI
pipeline that wedges may simply stop returning frames without an error. The capture thread stamps each frame
once at arrival on the monotonic clock and hands it to a sink; a separate watchdog notices "no frame for N
seconds" and forces a reopen, replacing the capture thread outright if it is stuck inside ``read``. Both are
supervised (:mod:`appliance.sources.supervise`): a thread that dies of an unexpected exception is logged and
started again, and the count is in :class:`CameraHealth`.

A frame remembers the size the camera delivered it at (``source_size``) when the camera resized it (a file
source with ``width``/``height``): an upscaled 1x1 stream is still one pixel of information, and the quality
gate measures faces in the camera's own pixels (:meth:`Frame.source_px`).
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from appliance.clock import NS_PER_S, now_ns
from appliance.config import default
from appliance.sources.supervise import SupervisedThread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    """One camera frame (BGR uint8, HxWx3) stamped at arrival; ``index`` counts frames since start.

    ``source_size`` is (width, height) as the camera delivered the frame, when the camera resized it
    afterwards; ``None`` means ``image`` is as delivered.
    """

    t_ns: int
    image: np.ndarray
    index: int
    source_size: tuple[int, int] | None = None

    def source_px(self, box: tuple[int, int, int, int]) -> float:
        """The shorter side of ``box`` (x, y, w, h in ``image`` pixels, clipped to the image) in the camera's
        own pixels: how much real resolution a face in that box has, whatever it was resized to later."""
        h, w = self.image.shape[:2]
        x, y, bw, bh = box
        cw = max(0, min(x + bw, w) - max(x, 0))
        ch = max(0, min(y + bh, h) - max(y, 0))
        sw, sh = self.source_size or (w, h)
        return float(min(cw * sw / w, ch * sh / h)) if w and h else 0.0


@dataclass(frozen=True)
class CameraConfig:
    """What to open and how.

    ``source``: an int device index, a ``/dev/videoN`` path, a GStreamer pipeline ending in ``appsink`` (see
    :func:`csi_pipeline`) or a video file path. ``kind`` overrides the guess ("device", "gstreamer", "file").
    ``fps``/``width``/``height`` are requested from devices; for files, width/height resize the frames and
    ``fps`` overrides the file's own rate used for pacing. ``loop`` replays a file forever (simulated bed);
    a non-looping file ends the source at end of file. ``watchdog_s``: reopen after that long without frames.
    """

    source: int | str
    kind: str | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    loop: bool = default("camera", "loop")
    pace: bool = True
    watchdog_s: float = default("camera", "reopen_after_s")
    reopen_backoff_s: float = 0.2
    reopen_backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        # NaN passes every "<= 0" test and then kills a thread at int(): refuse it here, naming the field.
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"CameraConfig.fps must be a finite number > 0 (or None), got {self.fps!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"CameraConfig.{name} must be > 0 (or None), got {value!r}")
        for name in ("watchdog_s", "reopen_backoff_s", "reopen_backoff_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"CameraConfig.{name} must be a finite number > 0, got {value!r}")
        if self.reopen_backoff_max_s < self.reopen_backoff_s:
            raise ValueError(f"CameraConfig.reopen_backoff_max_s ({self.reopen_backoff_max_s}) must be >= "
                             f"reopen_backoff_s ({self.reopen_backoff_s})")

    def resolved_kind(self) -> str:
        """The source kind, guessed from ``source`` unless ``kind`` says it."""
        if self.kind is not None:
            if self.kind not in ("device", "gstreamer", "file"):
                raise ValueError(f"CameraConfig.kind must be device, gstreamer or file, got {self.kind!r}")
            return self.kind
        if isinstance(self.source, int):
            return "device"
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"CameraConfig.source must be an int index or a non-empty string, got {self.source!r}")
        if self.source.startswith("/dev/video"):
            return "device"
        if "!" in self.source and "appsink" in self.source:
            return "gstreamer"
        return "file"


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc) delivering BGR to OpenCV's appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! videoconvert ! "
        "video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


@dataclass(frozen=True)
class CameraHealth:
    """Snapshot for the status topic and the service watchdog."""

    open: bool
    ended: bool
    fps_measured: float
    frames: int
    last_frame_age_s: float | None
    reopen_count: int
    open_failures: int
    last_error: str | None
    thread_restarts: int = 0  # capture or watchdog thread died of an exception and was started again


class Camera:
    """Runs one capture in its own thread and pushes :class:`Frame` objects to ``sink``.

    The sink is called from the capture thread; it must be quick (append to a ring buffer, run the face
    tracker) or the camera's own buffer will drop frames.
    """

    def __init__(self, config: CameraConfig, sink: Callable[[Frame], None]) -> None:
        self.config = config
        self._kind = config.resolved_kind()
        self._sink = sink
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0
        self._threads: list[SupervisedThread] = []
        self._watchdog: SupervisedThread | None = None
        self._reopen_requested = threading.Event()
        self._wake = threading.Event()  # set on stop or reopen request: interrupts the pacing sleep
        # health state (guarded by _lock)
        self._open = False
        self._ended = False
        self._frames = 0
        self._last_frame_ns: int | None = None
        self._progress_ns = 0  # last frame or last (re)open: what the watchdog measures silence from
        self._in_read_since: int | None = None
        self._arrivals: deque[int] = deque(maxlen=60)
        self._reopens = 0
        self._open_failures = 0
        self._thread_restarts = 0
        self._last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> "Camera":
        if self._watchdog is not None:
            raise RuntimeError("Camera.start: already started")
        with self._lock:
            self._progress_ns = now_ns()
        self._spawn_capture()
        self._watchdog = SupervisedThread("camera-watchdog", self._watch, keep_running=lambda: not self._stop.is_set(),
                                          wait=self._stop.wait, backoff_s=self._backoff(),
                                          on_crash=self._crashed).start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop capturing and join the threads (a thread stuck in a driver call is abandoned after timeout)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout_s
        for t in [self._watchdog, *self._threads]:
            if t is not None:
                t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._open = False

    def __enter__(self) -> "Camera":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self) -> CameraHealth:
        with self._lock:
            arr = list(self._arrivals)
            fps = (len(arr) - 1) * NS_PER_S / (arr[-1] - arr[0]) if len(arr) >= 2 and arr[-1] > arr[0] else 0.0
            age = None if self._last_frame_ns is None else (now_ns() - self._last_frame_ns) / NS_PER_S
            return CameraHealth(self._open, self._ended, fps, self._frames, age, self._reopens,
                                self._open_failures, self._last_error, self._thread_restarts)

    def _backoff(self) -> tuple[float, float]:
        return self.config.reopen_backoff_s, self.config.reopen_backoff_max_s

    def _crashed(self, exc: BaseException) -> None:
        """A capture or watchdog thread died (the supervisor logged it and restarts it): count it, say why."""
        with self._lock:
            self._thread_restarts += 1
            self._last_error = f"driver thread died: {type(exc).__name__}: {exc}"

    # -- capture -----------------------------------------------------------------------------------------
    def _spawn_capture(self) -> None:
        with self._lock:
            self._generation += 1
            gen = self._generation
        t = SupervisedThread(f"camera-capture-{gen}", lambda: self._run(gen), keep_running=lambda: self._current(gen),
                             wait=self._stop.wait, backoff_s=self._backoff(), on_crash=self._crashed)
        self._threads = [th for th in self._threads if th.is_alive()] + [t]
        t.start()

    def _current(self, gen: int) -> bool:
        return not self._stop.is_set() and gen == self._generation

    def _open_capture(self) -> cv2.VideoCapture | None:
        cfg = self.config
        src = cfg.source
        if self._kind == "gstreamer":
            cap = cv2.VideoCapture(str(src), cv2.CAP_GSTREAMER)
        elif self._kind == "file":
            if not os.path.exists(str(src)):
                self._note_error(f"video file not found: {src}")
                return None
            cap = cv2.VideoCapture(str(src))
        else:
            cap = cv2.VideoCapture(src)
            if cap.isOpened():
                if cfg.width:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
                if cfg.height:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
                if cfg.fps:
                    cap.set(cv2.CAP_PROP_FPS, cfg.fps)
        if not cap.isOpened():
            cap.release()
            self._note_error(f"cannot open {self._kind} source {src!r}")
            return None
        return cap

    def _note_error(self, msg: str) -> None:
        with self._lock:
            if msg != self._last_error:
                log.warning("camera: %s", msg)
            self._last_error = msg

    def _run(self, gen: int) -> None:
        backoff = self.config.reopen_backoff_s
        first = True
        while self._current(gen):
            cap = self._open_capture()
            if cap is None:
                with self._lock:
                    self._open_failures += 1
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.config.reopen_backoff_max_s)
                continue
            backoff = self.config.reopen_backoff_s
            with self._lock:
                self._open, self._ended = True, False
                self._progress_ns = now_ns()
                if not first:
                    self._reopens += 1
            first = False
            try:
                finished = self._pump(cap, gen)
            finally:
                cap.release()
                with self._lock:
                    if gen == self._generation:
                        self._open = False
            if finished:
                with self._lock:
                    self._ended = True
                return

    def _pump(self, cap: cv2.VideoCapture, gen: int) -> bool:
        """Read frames until stop/reopen/failure. Returns True when a non-looping file has ended."""
        cfg = self.config
        pace_fps = 0.0
        if self._kind == "file" and cfg.pace:
            pace_fps = float(cfg.fps or cap.get(cv2.CAP_PROP_FPS) or 0.0)
            if not pace_fps > 0:
                raise ValueError(f"camera: file {cfg.source!r} reports no fps; set CameraConfig.fps")
        period_ns = int(NS_PER_S / pace_fps) if pace_fps else 0
        next_due = now_ns()
        self._reopen_requested.clear()
        self._wake.clear()
        while self._current(gen) and not self._reopen_requested.is_set():
            if period_ns:
                wait_ns = next_due - now_ns()
                if wait_ns > 0 and self._wake.wait(wait_ns / NS_PER_S):
                    return False  # stop or reopen requested
                next_due = max(next_due + period_ns, now_ns() - period_ns)
            with self._lock:
                self._in_read_since = now_ns()
            ok, image = cap.read()
            t = now_ns()
            with self._lock:
                self._in_read_since = None
            if not self._current(gen):
                return False
            if not ok or image is None:
                if self._kind == "file":
                    if cfg.loop and cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                        ok, image = cap.read()
                        t = now_ns()
                    if not ok or image is None:
                        if cfg.loop:
                            self._note_error(f"cannot rewind video file {cfg.source!r}")
                            return False  # reopen
                        return True
                else:
                    self._note_error(f"read failed on {cfg.source!r}")
                    self._stop.wait(0.01)
                    continue
            source_size = None
            if self._kind == "file" and cfg.width and cfg.height and image.shape[:2] != (cfg.height, cfg.width):
                source_size = (int(image.shape[1]), int(image.shape[0]))
                image = cv2.resize(image, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
            with self._lock:
                index = self._frames
                self._frames += 1
                self._last_frame_ns = self._progress_ns = t
                self._arrivals.append(t)
            try:
                self._sink(Frame(t, image, index, source_size))
            except Exception:  # a broken consumer must not kill the camera
                log.exception("camera: sink raised")
        return False

    # -- watchdog ----------------------------------------------------------------------------------------
    def _watch(self) -> None:
        limit_ns = int(self.config.watchdog_s * NS_PER_S)
        tick = min(0.1, self.config.watchdog_s / 4)
        while not self._stop.wait(tick):
            with self._lock:
                silent = now_ns() - self._progress_ns
                stuck = self._in_read_since is not None and now_ns() - self._in_read_since > limit_ns
                ended, is_open = self._ended, self._open
            if ended or silent <= limit_ns or not is_open:
                continue  # a finished file needs no reopen; a closed source is already retrying
            log.warning("camera: no frame for %.1f s, reopening", silent / NS_PER_S)
            with self._lock:
                self._progress_ns = now_ns()
                self._last_error = f"no frame for {silent / NS_PER_S:.1f} s"
            if stuck:
                # The thread is blocked inside the driver; abandon it (it exits when read returns) and start
                # a fresh one with its own VideoCapture.
                with self._lock:
                    self._open = False
                    self._reopens += 1
                self._spawn_capture()
            else:
                self._reopen_requested.set()
                self._wake.set()
