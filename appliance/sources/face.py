"""Face detection and tracking that turns camera frames into square face crops for the video model.

Why this shape: a face detector (CenterFace through ONNX Runtime by default, OpenCV's Haar cascade as the
fallback; see :mod:`appliance.sources.face_detectors`) is cheap enough for the CPU of a bedside box but not on
every frame, and its boxes jitter. So the tracker re-detects every ``k`` frames, keeps the last box in between,
smooths it (exponential moving average) against jitter, widens it by a margin so brow and mouth stay inside,
and cuts a square crop from the *current* frame (handed over as a region of that frame and resized only when a
clip needs it: :mod:`appliance.sources.face_crop`). A detection that misses is tolerated ``max_missed`` times in
a row (a detector blinks on a yawn or a passing hand); after that the track is dropped and the observation
says "no face" with a reason: the model must never be fed an old crop or a crop of an empty cot as if it were
the infant's face.

A fixed region of interest (camera mounted above the cot, face position known) is a separate, explicitly
configured mode: the crop is always that region, but only while the detector, run inside the region, confirms
a face there (so an empty cot or a wall is "no face", and ``neopain commission`` can fail). A region that does
not lie inside the camera's frame is a configuration error, refused when the first frame shows the frame size.
It is never used as a silent fallback when detection fails.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from appliance.config import default
from appliance.sources.camera import Frame
from appliance.sources.face_crop import FaceCrop, WithFace, as_face_crop
from appliance.sources.face_detectors import DETECTORS, Box, FaceDetector, make_detector
from models.features.video import resize_face

log = logging.getLogger(__name__)

#: The config key a refused fixed ROI names (the operator edits that key).
ROI_KEY = "camera.face_roi"


@dataclass(frozen=True)
class FaceConfig:
    """Tracker settings.

    ``crop_size``: side of the square crop handed to the video model. ``detector``: "centerface" (default) or
    "haar"; the other one is used, with a journal line saying why, when it cannot be loaded.
    ``detector_model``: the CenterFace ONNX file (None: the one installed with the package).
    ``detect_every``: re-detect every k frames (1 = every frame). ``margin``: fraction of the face box added on
    every side. ``smoothing``: weight of the new detection in the box average (1 = no smoothing).
    ``detect_width``: frames are resized to this width for detection (speed; small frames are enlarged).
    ``min_face_frac``: smallest face side as a fraction of the frame height. ``score_threshold``: CenterFace's
    minimum face score (faceless scenes score below 0.2, faces 0.6-0.95). ``max_missed``: detections in a row
    allowed to miss before the track is dropped (0 = drop at the first miss). ``equalize``: histogram-equalise
    before the Haar cascade (helps in dim, low-contrast cots; also amplifies noise). ``roi``: (x, y, w, h)
    selects fixed-ROI mode: the crop is always taken there, while the detector finds a face inside it.
    """

    crop_size: int = default("camera", "face_crop_size")
    detector: str = default("camera", "face_detector")
    detector_model: str | None = None
    detect_every: int = 5
    margin: float = 0.25
    smoothing: float = 0.5
    detect_width: int = 320
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_face_frac: float = 0.1
    score_threshold: float = 0.4
    max_missed: int = 2
    equalize: bool = False
    roi: Box | None = None

    def __post_init__(self) -> None:
        if self.crop_size < 8:
            raise ValueError(f"FaceConfig.crop_size must be >= 8, got {self.crop_size}")
        if self.detector not in DETECTORS:
            raise ValueError(f"FaceConfig.detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.detect_every < 1:
            raise ValueError(f"FaceConfig.detect_every must be >= 1, got {self.detect_every}")
        if self.max_missed < 0:
            raise ValueError(f"FaceConfig.max_missed must be >= 0, got {self.max_missed}")
        if not 0 < self.smoothing <= 1:
            raise ValueError(f"FaceConfig.smoothing must be in (0, 1], got {self.smoothing}")
        if self.margin < 0:
            raise ValueError(f"FaceConfig.margin must be >= 0, got {self.margin}")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[:2]) < 0 or self.roi[2] <= 0
                                     or self.roi[3] <= 0):
            raise ValueError(f"FaceConfig.roi must be (x, y, w, h) with x, y >= 0 and w, h > 0, got {self.roi}")


class FaceObservation(WithFace):
    """What the tracker saw in one frame: a face crop (uint8 BGR, crop_size^2) or ``None`` with a reason.

    ``t_ns`` is the frame's arrival stamp, so the crop is exactly as old as the frame it was cut from.
    ``detected`` is True when a detection ran on this very frame and confirmed the box.

    ``face`` is the crop as a :class:`~appliance.sources.face_crop.FaceCrop`: the tracker hands over the face
    region and the resize happens only when the crop is needed (why: that module). ``crop`` gives its pixels,
    resizing them if they are not yet; ``has_face`` says whether there is a face without resizing anything.
    ``crop`` may be given as a plain array (tests and tools that fill buffers themselves).
    """

    __slots__ = ("t_ns", "face", "box", "reason", "detected", "frame_index")

    def __init__(self, t_ns: int, crop: FaceCrop | np.ndarray | None, box: Box | None, reason: str,
                 detected: bool = False, frame_index: int = -1) -> None:
        self.t_ns = t_ns
        self.face = as_face_crop(t_ns, crop)
        self.box = box
        self.reason = reason
        self.detected = detected
        self.frame_index = frame_index

    def __repr__(self) -> str:
        return (f"FaceObservation(t_ns={self.t_ns}, face={self.face!r}, box={self.box}, reason={self.reason!r}, "
                f"detected={self.detected}, frame_index={self.frame_index})")


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


def square_region(image: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """The square (margin-widened) region of ``box`` in ``image``, as a view (nothing copied or resized)."""
    h, w = image.shape[:2]
    x0, y0, side, _ = square_box(box, margin, w, h)
    return image[y0:y0 + side, x0:x0 + side]


def crop_square(image: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """Cut the square (margin-widened) region of ``box`` from ``image`` and resize it to ``size`` x ``size`` with
    the resize the networks are trained with (:func:`models.features.video.resize_face`)."""
    return resize_face(square_region(image, box, margin), size)


def roi_error(roi: Box, frame_w: int, frame_h: int) -> str | None:
    """Why ``roi`` cannot be used on a ``frame_w`` x ``frame_h`` frame (None when it lies inside it)."""
    x, y, w, h = roi
    if x + w <= frame_w and y + h <= frame_h:
        return None
    return (f"{ROI_KEY} [{x}, {y}, {w}, {h}] reaches beyond the camera's {frame_w}x{frame_h} frame "
            f"(x + width <= {frame_w}, y + height <= {frame_h} required): no face crops until it is fixed")


class FaceTracker:
    """Turns frames into :class:`FaceObservation` objects (not thread-safe: feed it from one thread).

    ``detector_name`` says which detector runs; ``detector_fallback`` why it is not the configured one (None
    when it is); ``config_error`` is set while the frames refuse the configured ROI.
    """

    def __init__(self, config: FaceConfig | None = None, detector: FaceDetector | None = None) -> None:
        self.config = cfg = config or FaceConfig()
        self.detector_fallback: str | None = None
        if detector is None:
            detector, self.detector_fallback = make_detector(
                cfg.detector, model_path=cfg.detector_model, detect_width=cfg.detect_width,
                min_face_frac=cfg.min_face_frac, score_threshold=cfg.score_threshold,
                scale_factor=cfg.scale_factor, min_neighbors=cfg.min_neighbors, equalize=cfg.equalize)
        self.detector = detector
        self.config_error: str | None = None
        self._checked_size: tuple[int, int] | None = None
        self._box: np.ndarray | None = None  # smoothed (x, y, w, h) as floats
        self._since_detect = 0
        self._missed = 0

    @property
    def mode(self) -> str:
        return "roi" if self.config.roi is not None else "detect"

    @property
    def detector_name(self) -> str:
        return self.detector.name

    def reset(self) -> None:
        """Forget the track (e.g. after the camera reopened: the scene may have changed)."""
        self._box = None
        self._since_detect = 0
        self._missed = 0

    def detect(self, image: np.ndarray) -> list[Box]:
        """All face boxes the detector finds in ``image``, in frame pixels, largest first."""
        return self.detector.detect(image)

    def process(self, frame: Frame) -> FaceObservation:
        """Observe one frame: a current crop, or ``None`` with the reason."""
        image = frame.image
        if image is None or image.ndim not in (2, 3) or image.size == 0 or image.dtype != np.uint8:
            return FaceObservation(frame.t_ns, None, None, "invalid frame", frame_index=frame.index)
        cfg = self.config
        if cfg.roi is not None:
            return self._process_roi(frame, image, cfg.roi)
        detected = False
        if self._box is None or self._since_detect >= cfg.detect_every - 1:
            self._since_detect = 0
            boxes = self.detect(image)
            if not boxes:
                if not self._miss():
                    return FaceObservation(frame.t_ns, None, None, "no face detected", frame_index=frame.index)
            else:
                self._missed = 0
                detected = True
                new = np.asarray(self._nearest(boxes), dtype=float)
                self._box = new if self._box is None else cfg.smoothing * new + (1 - cfg.smoothing) * self._box
        else:
            self._since_detect += 1
        box: Box = tuple(int(round(v)) for v in self._box)  # type: ignore[assignment,union-attr]
        crop = FaceCrop(frame.t_ns, cfg.crop_size, square_region(image, box, cfg.margin))
        return FaceObservation(frame.t_ns, crop, box, "detected" if detected else "tracked", detected,
                               frame.index)

    def _miss(self) -> bool:
        """Count a detection that found nothing; True while the track survives it (``max_missed``)."""
        self._missed += 1
        if self._box is None or self._missed > self.config.max_missed:
            self._box = None
            return False
        return True

    def _process_roi(self, frame: Frame, image: np.ndarray, roi: Box) -> FaceObservation:
        """Fixed-ROI mode: the crop is the region, while the detector (inside the region) confirms a face."""
        cfg = self.config
        h, w = image.shape[:2]
        if self._checked_size != (w, h):  # once per frame size: the first frame, and after a camera reopen
            self._checked_size = (w, h)
            self.config_error = roi_error(roi, w, h)
            if self.config_error:
                log.error("face tracker: %s", self.config_error)
        if self.config_error:
            return FaceObservation(frame.t_ns, None, None, self.config_error, frame_index=frame.index)
        x, y, rw, rh = roi
        detected = False
        if self._box is None or self._since_detect >= cfg.detect_every - 1:
            self._since_detect = 0
            if self.detect(image[y:y + rh, x:x + rw]):
                self._missed = 0
                self._box = np.asarray(roi, dtype=float)
                detected = True
            elif not self._miss():
                return FaceObservation(frame.t_ns, None, None, "no face in the fixed roi", frame_index=frame.index)
        else:
            self._since_detect += 1
        crop = FaceCrop(frame.t_ns, cfg.crop_size, square_region(image, roi, 0.0))
        return FaceObservation(frame.t_ns, crop, roi, "fixed roi", detected, frame.index)

    def _nearest(self, boxes: list[Box]) -> Box:
        """The detection closest to the current track (the same infant), else the largest."""
        if self._box is None:
            return boxes[0]
        cx, cy = self._box[0] + self._box[2] / 2, self._box[1] + self._box[3] / 2
        return min(boxes, key=lambda b: (b[0] + b[2] / 2 - cx) ** 2 + (b[1] + b[3] / 2 - cy) ** 2)
