"""Face detection and tracking that turns camera frames into square face crops for the video model.

Why this shape: a Haar cascade (shipped with opencv-python-headless 4.x) is cheap enough to run on the CPU
of a bedside box but too slow and jittery to run on every frame. So the tracker re-detects every ``k`` frames,
keeps the last box in between, smooths it (exponential moving average) against jitter, widens it by a margin
so brow and mouth stay inside, and cuts a square crop from the *current* frame. When a detection finds no
face, the track is dropped at once and the observation says "no face" with a reason: the model must never be
fed an old crop or a crop of an empty cot as if it were the infant's face.

A fixed region of interest (camera mounted above the cot, face position known) is a separate, explicitly
configured mode; it is never used as a silent fallback when detection fails.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from appliance.config import default
from appliance.sources.camera import Frame

Box = tuple[int, int, int, int]  # x, y, w, h in frame pixels

CASCADE_FILE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class FaceConfig:
    """Tracker settings.

    ``crop_size``: side of the square crop handed to the video model. ``detect_every``: re-detect every k
    frames (1 = every frame). ``margin``: fraction of the face box added on every side. ``smoothing``: weight
    of the new detection in the box average (1 = no smoothing). ``detect_width``: frames are downscaled to this
    width for detection (speed). ``min_face_frac``: smallest face side as a fraction of the frame height.
    ``max_missed``: detections allowed to miss before the track is dropped (0 = drop at the first miss).
    ``equalize``: histogram-equalise before detection (helps in dim, low-contrast cots; off by default since it
    also amplifies noise). ``roi``: (x, y, w, h) selects fixed-ROI mode: no detection, the crop is always taken there.
    """

    crop_size: int = default("camera", "face_crop_size")
    detect_every: int = 5
    margin: float = 0.25
    smoothing: float = 0.5
    detect_width: int = 320
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_face_frac: float = 0.1
    max_missed: int = 0
    equalize: bool = False
    roi: Box | None = None

    def __post_init__(self) -> None:
        if self.crop_size < 8:
            raise ValueError(f"FaceConfig.crop_size must be >= 8, got {self.crop_size}")
        if self.detect_every < 1:
            raise ValueError(f"FaceConfig.detect_every must be >= 1, got {self.detect_every}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"FaceConfig.smoothing must be in (0, 1], got {self.smoothing}")
        if self.margin < 0:
            raise ValueError(f"FaceConfig.margin must be >= 0, got {self.margin}")
        if self.roi is not None and (len(self.roi) != 4 or self.roi[2] <= 0 or self.roi[3] <= 0):
            raise ValueError(f"FaceConfig.roi must be (x, y, w, h) with w, h > 0, got {self.roi}")


@dataclass(frozen=True)
class FaceObservation:
    """What the tracker saw in one frame: a crop (uint8 BGR, crop_size^2) or ``None`` with a reason.

    ``t_ns`` is the frame's arrival stamp, so the crop is exactly as old as the frame it was cut from.
    ``detected`` is True when a detection ran on this very frame and confirmed the box.
    """

    t_ns: int
    crop: np.ndarray | None
    box: Box | None
    reason: str
    detected: bool = False
    frame_index: int = -1

    @property
    def has_face(self) -> bool:
        return self.crop is not None


def load_cascade() -> cv2.CascadeClassifier:
    """The frontal-face Haar cascade shipped with opencv-python-headless 4.x (absent from OpenCV 5.x)."""
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if base is None or not hasattr(cv2, "CascadeClassifier"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} ships no Haar cascades/CascadeClassifier; install opencv-python-headless<5 "
            "or configure FaceConfig.roi (fixed ROI mode)"
        )
    path = os.path.join(base, CASCADE_FILE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load Haar cascade {path}")
    return cascade


def square_box(box: Box, margin: float, frame_w: int, frame_h: int) -> Box:
    """Square box around ``box``'s centre, widened by ``margin`` per side, shifted (not cut) to fit the frame.

    Shifting keeps the face whole and the crop square; only when the square is larger than the frame is its
    side reduced to the frame's smaller dimension.
    """
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    side = max(1, min(side, frame_w, frame_h))
    cx, cy = x + w / 2, y + h / 2
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    x0 = min(max(0, x0), frame_w - side)
    y0 = min(max(0, y0), frame_h - side)
    return x0, y0, side, side


def crop_square(image: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """Cut the square (margin-widened) region of ``box`` from ``image`` and resize it to ``size`` x ``size``."""
    h, w = image.shape[:2]
    x0, y0, side, _ = square_box(box, margin, w, h)
    patch = image[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


class FaceTracker:
    """Turns frames into :class:`FaceObservation` objects (not thread-safe: feed it from one thread)."""

    def __init__(self, config: FaceConfig | None = None) -> None:
        self.config = config or FaceConfig()
        self._cascade = None if self.config.roi is not None else load_cascade()
        self._box: np.ndarray | None = None  # smoothed (x, y, w, h) as floats
        self._since_detect = 0
        self._missed = 0

    @property
    def mode(self) -> str:
        return "roi" if self.config.roi is not None else "detect"

    def reset(self) -> None:
        """Forget the track (e.g. after the camera reopened: the scene may have changed)."""
        self._box = None
        self._since_detect = 0
        self._missed = 0

    def detect(self, image: np.ndarray) -> list[Box]:
        """All face boxes the cascade finds in ``image``, in frame pixels, largest first."""
        assert self._cascade is not None
        cfg = self.config
        h, w = image.shape[:2]
        scale = min(1.0, cfg.detect_width / w)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        if scale < 1.0:
            gray = cv2.resize(gray, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
        if cfg.equalize:
            gray = cv2.equalizeHist(gray)
        min_side = max(12, int(cfg.min_face_frac * gray.shape[0]))
        found = self._cascade.detectMultiScale(
            gray, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors, minSize=(min_side, min_side)
        )
        boxes = [tuple(int(round(v / scale)) for v in b) for b in np.asarray(found).reshape(-1, 4)]
        return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)  # type: ignore[return-value]

    def process(self, frame: Frame) -> FaceObservation:
        """Observe one frame: a current crop, or ``None`` with the reason."""
        image = frame.image
        if image is None or image.ndim not in (2, 3) or image.size == 0 or image.dtype != np.uint8:
            return FaceObservation(frame.t_ns, None, None, "invalid frame", frame_index=frame.index)
        cfg = self.config
        if cfg.roi is not None:
            return FaceObservation(frame.t_ns, crop_square(image, cfg.roi, 0.0, cfg.crop_size), cfg.roi,
                                   "fixed roi", frame_index=frame.index)
        detected = False
        if self._box is None or self._since_detect >= cfg.detect_every - 1:
            self._since_detect = 0
            boxes = self.detect(image)
            if not boxes:
                self._missed += 1
                if self._box is None or self._missed > cfg.max_missed:
                    self._box = None
                    return FaceObservation(frame.t_ns, None, None, "no face detected", frame_index=frame.index)
            else:
                self._missed = 0
                detected = True
                new = np.asarray(self._nearest(boxes), dtype=float)
                self._box = new if self._box is None else cfg.smoothing * new + (1 - cfg.smoothing) * self._box
        else:
            self._since_detect += 1
        box: Box = tuple(int(round(v)) for v in self._box)  # type: ignore[assignment]
        crop = crop_square(image, box, cfg.margin, cfg.crop_size)
        return FaceObservation(frame.t_ns, crop, box, "detected" if detected else "tracked", detected,
                               frame.index)

    def _nearest(self, boxes: list[Box]) -> Box:
        """The detection closest to the current track (the same infant), else the largest."""
        if self._box is None:
            return boxes[0]
        cx, cy = self._box[0] + self._box[2] / 2, self._box[1] + self._box[3] / 2
        return min(boxes, key=lambda b: (b[0] + b[2] / 2 - cx) ** 2 + (b[1] + b[3] / 2 - cy) ** 2)
