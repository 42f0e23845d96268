"""Face-clip pre-processing shared by training, export checks and the device.

Why one function: the I3D trunk only gives the numbers it was trained with when the clip is resampled,
resized, scaled and normalised exactly the same way everywhere. The checkpoint families differ (pytorchvideo
normalises RGB in [0, 1] with Kinetics mean/std, mmaction2 RGB in [0, 255] with ImageNet mean/std), so the
scale and statistics come from the ``VideoConfig`` that travels with the weights, never from a constant here.

Speed (a score every 2 s on a 2-core CPU): frames are cropped to the face before any pixel is converted,
resized into a reused buffer (in parallel over frames when there is resizing to do), and normalised in place
in the network's layout — no per-frame arrays, one output array per clip. See :func:`clip_array`.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import cv2
import numpy as np

from models.configs import VideoConfig

if TYPE_CHECKING:
    import torch


def sample_frame_indices(n_available: int, n_wanted: int) -> np.ndarray:
    """Indices of ``n_wanted`` frames spread uniformly over ``n_available`` (first and last included).

    Same rule as pytorchvideo's ``UniformTemporalSubsample`` (linspace, truncated to int), so a clip
    assembled here picks the frames a pytorchvideo training pipeline would. Repeats frames when fewer are
    available than wanted.
    """
    if int(n_available) != n_available or n_available < 1:
        raise ValueError(f"n_available must be a positive integer, got {n_available!r}")
    if int(n_wanted) != n_wanted or n_wanted < 1:
        raise ValueError(f"n_wanted must be a positive integer, got {n_wanted!r}")
    idx = np.linspace(0, n_available - 1, int(n_wanted)).astype(np.int64)
    return np.clip(idx, 0, n_available - 1)


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array (T, H, W, 3) uint8, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames dtype must be uint8 (RGB 0-255), got {frames.dtype}")
    if frames.ndim != 4:
        raise ValueError(f"frames must have 4 dimensions (T, H, W, 3), got {frames.ndim} with shape {frames.shape}")
    names = ("T (frames)", "H (height)", "W (width)")
    for axis, name in enumerate(names):
        if frames.shape[axis] < 1:
            raise ValueError(f"frames dimension {axis} {name} is empty in shape {frames.shape}")
    if frames.shape[3] != 3:
        raise ValueError(f"frames dimension 3 (channels) must be 3 (RGB), got {frames.shape[3]} in shape {frames.shape}")


def check_box(box: tuple[int, int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) clipped to a ``width`` x ``height`` frame; refused when nothing of it is inside."""
    x, y, w, h = (int(v) for v in box)
    x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
    if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {tuple(box)} (x, y, w, h) lies outside the {width}x{height} frames")
    return x0, y0, x1 - x0, y1 - y0


def _channel_constants(cfg: VideoConfig) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """(scale, mean (3,1,1), std (3,1,1)) as float32: the normalisation's operands."""
    return (np.float32(cfg.pixel_scale / 255.0), np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1),
            np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1))


class _Workspace(threading.local):
    """Per-thread uint8 resize target, reused from clip to clip (no per-frame allocation)."""

    buffer: np.ndarray | None = None

    def get(self, size: int) -> np.ndarray:
        if self.buffer is None or self.buffer.shape != (size, size, 3):
            self.buffer = np.empty((size, size, 3), dtype=np.uint8)
        return self.buffer


_WORKSPACE = _Workspace()
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


#: How :func:`resize_face` resizes, as the manifest records it: a model exported under another rule is refused
#: by a device whose code resizes otherwise (``models.manifest.check_preprocessing``).
RESIZE_RULE = "shrink: cv2.INTER_AREA; enlarge: cv2.INTER_LINEAR"


def resize_face(region: np.ndarray, size: int, dst: np.ndarray | None = None) -> np.ndarray:
    """The one resize of a face region (H, W, 3) uint8 to ``size`` x ``size``: for the clips of training and
    scoring, and for the camera thread's face crops, so that both give the network the same pixels.

    Shrinking is one ``cv2.INTER_AREA`` step (area averaging does not alias a large face). Enlarging a face
    smaller than ``size`` is bilinear (``INTER_AREA`` enlarges like nearest neighbour, in blocks).

    Why not faster: a box average by the integer part of the factor and then a small resize is about 2x faster
    for a 720-pixel face, but its output is about 6 % less sharp at the tiny model's 32 pixels and the video
    model trained on it scored lower in each of 3 seeds (ICC(A,1) 0.771 vs 0.806, docs/benchmarks/int8_cpu.md).
    """
    h, w = region.shape[:2]
    if region.strides[1:] != (3, 1):  # OpenCV needs rows of packed pixels; a row stride of its own is fine
        region = np.ascontiguousarray(region)
    if (h, w) == (size, size):
        if dst is None:
            return region.copy()
        np.copyto(dst, region)
        return dst
    shrink = h >= size and w >= size
    return cv2.resize(region, (size, size), dst=dst, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _resize_pool() -> ThreadPoolExecutor | None:
    """Threads for resizing frames in parallel: 16 frames of a 720² face took 16 ms with this pool against 30 ms
    with OpenCV's own threads alone (2 cores, docs/benchmarks/int8_cpu.md).

    One per core, at most 4; recreated after a fork (a DataLoader worker must not inherit a dead pool).
    """
    global _POOL
    workers = min(4, os.cpu_count() or 1)
    if workers < 2:
        return None
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neopain-clip"))
        return _POOL[1]


def clip_array(
    frames: np.ndarray,
    cfg: VideoConfig,
    *,
    box: tuple[int, int, int, int] | None = None,
    bgr: bool = False,
) -> np.ndarray:
    """uint8 face frames (T, H, W, 3) -> normalised float32 clip (3, cfg.frames, crop, crop), as numpy.

    Steps: pick ``cfg.frames`` frames uniformly; cut ``box`` (x, y, w, h, in frame pixels) when given, as a
    view, *before* anything else touches the pixels; resize to ``crop_size`` x ``crop_size`` with
    :func:`resize_face` (area averaging does not alias when shrinking a large face crop) into a reused buffer;
    then, written straight into the (C, T, H, W) layout Conv3d expects and in place, scale to
    ``[0, cfg.pixel_scale]``, subtract ``cfg.mean`` and divide by ``cfg.std`` per channel. ``bgr``: the frames
    are OpenCV's BGR; the channels are swapped while copying the crop-sized pixels into place, instead of
    converting whole frames first.

    The result is bit-identical to resizing every frame and then normalising the whole clip: the same float32
    operations in the same order, only without the intermediate arrays.
    """
    _check_frames(frames)
    if cfg.pixel_scale <= 0:
        raise ValueError(f"VideoConfig.pixel_scale must be > 0, got {cfg.pixel_scale}")
    size = cfg.crop_size
    x, y, w, h = check_box(box, frames.shape[1], frames.shape[2]) if box is not None else (0, 0, frames.shape[2], frames.shape[1])
    picked = sample_frame_indices(frames.shape[0], cfg.frames)
    scale, mean, std = _channel_constants(cfg)
    channels = (2, 1, 0) if bgr else (0, 1, 2)
    out = np.empty((3, cfg.frames, size, size), dtype=np.float32)
    resize = (h, w) != (size, size)

    def one(t: int) -> None:
        region = frames[picked[t], y:y + h, x:x + w]
        if resize:
            pixels = resize_face(region, size, dst=_WORKSPACE.get(size))
        else:
            pixels = region
        planes = out[:, t]  # (3, size, size), written in place: no temporary arrays
        for c, source in enumerate(channels):
            np.copyto(planes[c], pixels[:, :, source], casting="unsafe")
        planes *= scale
        planes -= mean
        planes /= std

    pool = _resize_pool() if resize and cfg.frames > 1 else None
    if pool is None:
        for t in range(cfg.frames):
            one(t)
    else:
        for future in [pool.submit(one, t) for t in range(cfg.frames)]:
            future.result()
    return out


def preprocess_clip(
    frames: np.ndarray,
    cfg: VideoConfig,
    *,
    box: tuple[int, int, int, int] | None = None,
    bgr: bool = False,
) -> torch.Tensor:
    """:func:`clip_array` as a torch tensor (3, cfg.frames, crop, crop), for training and the encoder tests.

    torch is imported here, not by the module: the camera thread's face crops use :func:`resize_face`, and the
    daemon on ONNX Runtime does not load torch."""
    import torch

    return torch.from_numpy(clip_array(frames, cfg, box=box, bgr=bgr))
