"""Which published format a checkpoint file is, told from its content, and its loader for a chosen config.

Why detection from content: the same weights travel under many file names (``.pyth``, ``.pth``, ``.pt``) and
a user who names the wrong family gets a key error deep in a loader; the layouts themselves are unambiguous
(pytorchvideo: ``model_state`` / ``blocks.*``; mmaction2: ``backbone.*``; torchvision: ``conv1.weight``,
``layer1.*``; torchvggish: ``features.*`` + ``embeddings.*``). A name given explicitly always wins.

Why a family also changes the video config: the three I3D families differ in more than key names. mmaction2's
I3D-R50 has a temporal stride of 2 in the stem conv and its pool and was trained on ImageNet mean/std over RGB
in [0, 255]; an inflated ImageNet ResNet-50 expects ImageNet mean/std over [0, 1]; pytorchvideo's expects the
Kinetics statistics. :func:`adopt_video_family` carries those fields (never a size) onto the chosen config, so
the clips are normalised the way the weights were trained, in training and on the device alike.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from torch import nn

from models.checkpoints import CheckpointError, LoadReport
from models.checkpoints.i3d import (
    inflate_imagenet_resnet50,
    inflated_video_config,
    load_mmaction2_i3d,
    load_pytorchvideo_i3d,
    mmaction2_video_config,
)
from models.checkpoints.vggish import PCA_KEYS, load_torchvggish
from models.configs import AudioConfig, VideoConfig

AUTO = "auto"
PYTORCHVIDEO = "pytorchvideo"
MMACTION2 = "mmaction2"
IMAGENET_RESNET50 = "imagenet-resnet50"
TORCHVGGISH = "torchvggish"
VIDEO_FORMATS = (PYTORCHVIDEO, MMACTION2, IMAGENET_RESNET50)
AUDIO_FORMATS = (TORCHVGGISH,)

_VIDEO_LOADERS: dict[str, Callable[..., tuple[nn.Module, LoadReport]]] = {
    PYTORCHVIDEO: load_pytorchvideo_i3d,
    MMACTION2: load_mmaction2_i3d,
    IMAGENET_RESNET50: inflate_imagenet_resnet50,
}
# The fields in which the families differ without changing any tensor shape.
VIDEO_FAMILY_FIELDS = ("stem_stride_t", "stem_pool_stride_t", "mean", "std", "pixel_scale")
_VIDEO_FAMILY: dict[str, Callable[[], VideoConfig]] = {
    PYTORCHVIDEO: VideoConfig,
    MMACTION2: mmaction2_video_config,
    IMAGENET_RESNET50: inflated_video_config,
}


def _tensor_keys(obj: Any) -> list[str]:
    """Key names of the state dict inside ``obj`` (any usual wrapper, ``module.`` stripped)."""
    if isinstance(obj, Mapping):
        for wrapper in ("model_state", "state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        return []
    return [str(k).removeprefix("module.") for k in obj]


def detect_video_format(obj: Any, source: str) -> str:
    """pytorchvideo, mmaction2 or imagenet-resnet50, from the keys of a loaded checkpoint."""
    if isinstance(obj, Mapping) and "model_state" in obj:
        return PYTORCHVIDEO
    keys = _tensor_keys(obj)
    if any(k.startswith("backbone.") for k in keys):
        return MMACTION2
    if any(k.startswith("blocks.") for k in keys):
        return PYTORCHVIDEO
    if "conv1.weight" in keys or any(k.startswith("layer1.") for k in keys):
        return IMAGENET_RESNET50
    raise CheckpointError(
        f"{source}: cannot tell which video checkpoint format this is (first keys: {', '.join(keys[:5]) or 'none'}); "
        f"name it with --init-video-format ({', '.join(VIDEO_FORMATS)})"
    )


def detect_audio_format(obj: Any, source: str) -> str:
    """torchvggish (``features.*`` / ``embeddings.*``, maybe with PCA parameters), from the keys."""
    keys = _tensor_keys(obj)
    if any(k.startswith(("features.", "embeddings.")) for k in keys) or (keys and all(k.startswith(PCA_KEYS) for k in keys)):
        return TORCHVGGISH
    raise CheckpointError(
        f"{source}: cannot tell which audio checkpoint format this is (first keys: {', '.join(keys[:5]) or 'none'}); "
        f"name it with --init-audio-format ({', '.join(AUDIO_FORMATS)})"
    )


def adopt_video_family(fmt: str, base: VideoConfig) -> VideoConfig:
    """``base`` (its sizes) with the strides and normalisation of checkpoint family ``fmt``."""
    family = _VIDEO_FAMILY[fmt]()
    return dataclasses.replace(base, **{name: getattr(family, name) for name in VIDEO_FAMILY_FIELDS})


def load_video_checkpoint(obj: Mapping[str, Any], fmt: str, cfg: VideoConfig) -> tuple[nn.Module, LoadReport]:
    """The I3D backbone of ``cfg`` (no classifier) filled from ``obj`` in format ``fmt``.

    A classifier the checkpoint carries is dropped and listed as unexpected; any shape mismatch, missing or
    other unexpected key is a :class:`CheckpointError` naming it (see :mod:`models.checkpoints.i3d`).
    """
    if fmt not in _VIDEO_LOADERS:
        raise CheckpointError(f"unknown video checkpoint format {fmt!r}; choose one of {VIDEO_FORMATS}")
    return _VIDEO_LOADERS[fmt](obj, dataclasses.replace(cfg, num_classes=0))


def load_audio_checkpoint(obj: Mapping[str, Any], fmt: str, cfg: AudioConfig) -> tuple[nn.Module, LoadReport]:
    """VGGish of ``cfg`` filled from ``obj`` (PCA parameters reported as unexpected, never used)."""
    if fmt not in AUDIO_FORMATS:
        raise CheckpointError(f"unknown audio checkpoint format {fmt!r}; choose one of {AUDIO_FORMATS}")
    return load_torchvggish(obj, cfg)


__all__ = [
    "AUDIO_FORMATS",
    "AUTO",
    "VIDEO_FORMATS",
    "adopt_video_family",
    "detect_audio_format",
    "detect_video_format",
    "load_audio_checkpoint",
    "load_video_checkpoint",
]
