"""Face-clip pre-processing shared by training, export checks and the device.

Why one function: the I3D trunk only gives the numbers it was trained with when the clip is resampled,
resized, scaled and normalised exactly the same way everywhere. The checkpoint families differ (pytorchvideo
normalises RGB in [0, 1] with Kinetics mean/std, mmaction2 RGB in [0, 255] with ImageNet mean/std), so the
scale and statistics come from the ``VideoConfig`` that travels with the weights, never from a constant here.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from models.configs import VideoConfig


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


def preprocess_clip(frames: np.ndarray, cfg: VideoConfig) -> torch.Tensor:
    """uint8 RGB face crops (T, H, W, 3) -> normalised float32 clip (3, cfg.frames, crop, crop).

    Steps: pick ``cfg.frames`` frames uniformly, resize each crop to ``crop_size`` x ``crop_size`` with
    ``cv2.INTER_AREA`` (area averaging does not alias when shrinking a large face crop), scale to
    ``[0, cfg.pixel_scale]``, subtract ``cfg.mean`` and divide by ``cfg.std`` per channel.
    """
    _check_frames(frames)
    if cfg.pixel_scale <= 0:
        raise ValueError(f"VideoConfig.pixel_scale must be > 0, got {cfg.pixel_scale}")
    size = cfg.crop_size
    picked = frames[sample_frame_indices(frames.shape[0], cfg.frames)]
    out = np.empty((cfg.frames, size, size, 3), dtype=np.float32)
    for i, frame in enumerate(picked):
        if frame.shape[:2] == (size, size):
            out[i] = frame
        else:
            out[i] = cv2.resize(np.ascontiguousarray(frame), (size, size), interpolation=cv2.INTER_AREA)
    out *= np.float32(cfg.pixel_scale / 255.0)
    out -= np.asarray(cfg.mean, dtype=np.float32)
    out /= np.asarray(cfg.std, dtype=np.float32)
    # (T, H, W, C) -> (C, T, H, W), the layout Conv3d expects.
    return torch.from_numpy(np.ascontiguousarray(out.transpose(3, 0, 1, 2)))
