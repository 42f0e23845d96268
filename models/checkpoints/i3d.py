"""Loaders of published I3D-R50 / ResNet-50 weights into :func:`models.video.create_i3d_r50`.

Three families are worth reading on the device or for fine-tuning:

- pytorchvideo / PySlowFast ``i3d_r50`` (Kinetics-400): ``{"model_state": {blocks.*}}`` - our own names.
- mmaction2 ``i3d_r50`` (Kinetics-400): ``{"state_dict": {backbone.conv1.conv..., cls_head.fc_cls...}}``,
  the same shapes but a temporal stride of 2 in the stem conv and its max pool, and ImageNet mean/std on
  RGB in [0, 255]; the default config therefore differs, and travels with the returned model (``model.cfg``)
  so the pre-processing follows it.
- a torchvision 2D ImageNet ResNet-50, inflated (Carreira & Zisserman): each 2D kernel is repeated over the
  target temporal kernel and divided by its length, so a clip of identical frames gives the 2D activations.

Every loader translates names, checks shapes naming both the foreign and our key, and then goes through
:func:`load_mapped_state`, so missing and unexpected keys are errors unless deliberately dropped (a
classifier head we do not build) and are listed in the returned :class:`LoadReport`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from models.checkpoints import CheckpointError, LoadReport, load_mapped_state, read_checkpoint
from models.configs import IMAGENET_MEAN_255, IMAGENET_STD_255, VideoConfig
from models.video import I3DResNet, create_i3d_r50

PathOrState = str | Path | Mapping[str, Any]

HEAD_PREFIX = "blocks.6.proj."
# Our block index of res2..res5 (blocks.2 is the max pool after res2).
STAGE_BLOCK = {1: 1, 2: 3, 3: 4, 4: 5}
_BRANCH2 = {"1": "a", "2": "b", "3": "c"}

# ImageNet statistics of torchvision's ResNet-50 (RGB in [0, 1]).
IMAGENET_MEAN = tuple(round(m / 255.0, 6) for m in IMAGENET_MEAN_255)
IMAGENET_STD = tuple(round(s / 255.0, 6) for s in IMAGENET_STD_255)


def mmaction2_video_config(num_classes: int = 400) -> VideoConfig:
    """VideoConfig of mmaction2's I3D-R50: temporal stride 2 in stem conv and pool, ImageNet stats on 0-255."""
    return VideoConfig(
        stem_stride_t=2,
        stem_pool_stride_t=2,
        mean=IMAGENET_MEAN_255,
        std=IMAGENET_STD_255,
        pixel_scale=255.0,
        num_classes=num_classes,
    )


def inflated_video_config(num_classes: int = 0) -> VideoConfig:
    """VideoConfig for an inflated ImageNet ResNet-50: pytorchvideo topology, ImageNet stats on [0, 1]."""
    return VideoConfig(mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=num_classes)


def _state_dict(path_or_state: PathOrState, container: str, source: str) -> dict[str, torch.Tensor]:
    """The tensor dict of a checkpoint: ``obj[container]`` when present, else the object itself."""
    obj = read_checkpoint(path_or_state) if isinstance(path_or_state, (str, Path)) else path_or_state
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict checkpoint, got {type(obj).__name__}")
    if container in obj:
        obj = obj[container]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{source}: checkpoint[{container!r}] is a {type(obj).__name__}, not a state dict")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source}: no {container!r} entry and not a bare state dict "
            f"(non-tensor entries: {', '.join(map(str, not_tensors[:8]))})"
        )
    if not obj:
        raise CheckpointError(f"{source}: the state dict is empty")
    # DistributedDataParallel saves every key under "module."; the layout below it is the same.
    if all(k.startswith("module.") for k in obj):
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _rename(
    state: Mapping[str, torch.Tensor], rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Apply the first matching rule to each key; unmatched keys stay as they are (and so are reported
    as unexpected by name). Returns the renamed state and our-name -> foreign-name for messages."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new = key
        for pattern, build in rules:
            m = pattern.fullmatch(key)
            if m:
                new = build(m)
                break
        if new in out:
            raise CheckpointError(f"checkpoint keys {origin[new]!r} and {key!r} both map to {new!r}")
        out[new] = value
        origin[new] = key
    return out, origin


def _check_shapes(model: I3DResNet, state: Mapping[str, torch.Tensor], origin: Mapping[str, str], source: str) -> None:
    """Refuse shape mismatches, naming the checkpoint's own key beside ours."""
    own = model.state_dict()
    bad = [
        f"{origin.get(k, k)} -> {k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for {len(bad)} tensors: " + "; ".join(bad[:8]))


def _head_rows(state: Mapping[str, torch.Tensor], key: str) -> int:
    w = state.get(key)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim == 2 else 0


def _finish(
    model: I3DResNet,
    state: dict[str, torch.Tensor],
    origin: dict[str, str],
    source: str,
    *,
    allow_missing: tuple[str, ...] = (),
) -> tuple[I3DResNet, LoadReport]:
    # A head in the checkpoint is dropped on purpose when the model has none (num_classes == 0).
    allow_unexpected = (HEAD_PREFIX,) if model.cfg.num_classes == 0 else ()
    _check_shapes(model, state, origin, source)
    report = load_mapped_state(model, state, source, allow_missing=allow_missing, allow_unexpected=allow_unexpected)
    return model.eval(), report


def load_pytorchvideo_i3d(path_or_state: PathOrState, cfg: VideoConfig | None = None) -> tuple[I3DResNet, LoadReport]:
    """pytorchvideo ``i3d_r50`` checkpoint (``{"model_state": ...}`` or a bare state dict).

    Without ``cfg`` the model is pytorchvideo's, with as many classes as the checkpoint's head has (0 when
    it has none). With ``cfg.num_classes == 0`` the checkpoint's ``blocks.6.proj.*`` are dropped.
    """
    source = f"pytorchvideo i3d_r50 {path_or_state}" if isinstance(path_or_state, (str, Path)) else "pytorchvideo i3d_r50"
    state = _state_dict(path_or_state, "model_state", source)
    if cfg is None:
        cfg = VideoConfig(num_classes=_head_rows(state, HEAD_PREFIX + "weight"))
    return _finish(create_i3d_r50(cfg), state, {}, source)


_MMACTION2_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"backbone\.conv1\.conv\.(\w+)"), lambda m: f"blocks.0.conv.{m[1]}"),
    (re.compile(r"backbone\.conv1\.bn\.(\w+)"), lambda m: f"blocks.0.norm.{m[1]}"),
    (
        re.compile(r"backbone\.layer([1-4])\.(\d+)\.conv([123])\.(conv|bn)\.(\w+)"),
        lambda m: f"blocks.{STAGE_BLOCK[int(m[1])]}.res_blocks.{m[2]}.branch2."
        f"{'conv' if m[4] == 'conv' else 'norm'}_{_BRANCH2[m[3]]}.{m[5]}",
    ),
    (
        re.compile(r"backbone\.layer([1-4])\.(\d+)\.downsample\.(conv|bn)\.(\w+)"),
        lambda m: f"blocks.{STAGE_BLOCK[int(m[1])]}.res_blocks.{m[2]}."
        f"{'branch1_conv' if m[3] == 'conv' else 'branch1_norm'}.{m[4]}",
    ),
    (re.compile(r"cls_head\.fc_cls\.(weight|bias)"), lambda m: f"{HEAD_PREFIX}{m[1]}"),
]


def load_mmaction2_i3d(path_or_state: PathOrState, cfg: VideoConfig | None = None) -> tuple[I3DResNet, LoadReport]:
    """mmaction2 I3D-R50 checkpoint (``{"state_dict": ...}`` with ``backbone.*`` / ``cls_head.fc_cls.*``).

    Without ``cfg`` the model uses :func:`mmaction2_video_config` (temporal strides 2, ImageNet stats on
    0-255) with the checkpoint's number of classes.
    """
    source = f"mmaction2 i3d_r50 {path_or_state}" if isinstance(path_or_state, (str, Path)) else "mmaction2 i3d_r50"
    state, origin = _rename(_state_dict(path_or_state, "state_dict", source), _MMACTION2_RULES)
    if cfg is None:
        cfg = mmaction2_video_config(num_classes=_head_rows(state, HEAD_PREFIX + "weight"))
    return _finish(create_i3d_r50(cfg), state, origin, source)


_TORCHVISION_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"conv1\.weight"), lambda m: "blocks.0.conv.weight"),
    (re.compile(r"bn1\.(\w+)"), lambda m: f"blocks.0.norm.{m[1]}"),
    (
        re.compile(r"layer([1-4])\.(\d+)\.conv([123])\.weight"),
        lambda m: f"blocks.{STAGE_BLOCK[int(m[1])]}.res_blocks.{m[2]}.branch2.conv_{_BRANCH2[m[3]]}.weight",
    ),
    (
        re.compile(r"layer([1-4])\.(\d+)\.bn([123])\.(\w+)"),
        lambda m: f"blocks.{STAGE_BLOCK[int(m[1])]}.res_blocks.{m[2]}.branch2.norm_{_BRANCH2[m[3]]}.{m[4]}",
    ),
    (
        re.compile(r"layer([1-4])\.(\d+)\.downsample\.([01])\.(\w+)"),
        lambda m: f"blocks.{STAGE_BLOCK[int(m[1])]}.res_blocks.{m[2]}."
        f"{'branch1_conv' if m[3] == '0' else 'branch1_norm'}.{m[4]}",
    ),
]


def inflate_conv_weight(w2d: torch.Tensor, temporal_kernel: int) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, T, kh, kw) = w2d repeated over T and divided by T.

    Dividing by T keeps the response to a clip of identical frames equal to the 2D response.
    """
    if w2d.ndim != 4:
        raise ValueError(f"expected a 4D conv weight (O, I, kh, kw), got shape {tuple(w2d.shape)}")
    return w2d.unsqueeze(2).repeat(1, 1, temporal_kernel, 1, 1) / temporal_kernel


def inflate_imagenet_resnet50(path_or_state: PathOrState, cfg: VideoConfig | None = None) -> tuple[I3DResNet, LoadReport]:
    """torchvision ImageNet ResNet-50 (``conv1``, ``bn1``, ``layerN.j.convK/bnK``, ``downsample.0/1``, ``fc``)
    inflated into I3D-R50.

    Each 2D kernel is inflated to the temporal size of the matching 3D conv of the model (stem 5, conv_a per
    ``cfg.temporal_kernels``, others 1). ``fc`` becomes the head only when ``cfg.num_classes`` equals its
    size; otherwise it is dropped and a head the model has stays at its fresh initialisation (reported as
    missing). Default cfg: :func:`inflated_video_config` (no head, ImageNet stats on [0, 1]).
    """
    source = f"ImageNet ResNet-50 {path_or_state}" if isinstance(path_or_state, (str, Path)) else "ImageNet ResNet-50"
    raw = _state_dict(path_or_state, "state_dict", source)
    cfg = cfg or inflated_video_config()
    model = create_i3d_r50(cfg)
    own = model.state_dict()
    fc_fits = cfg.num_classes > 0 and tuple(raw.get("fc.weight", torch.empty(0)).shape) == (cfg.num_classes, cfg.feature_dim)
    rules = list(_TORCHVISION_RULES)
    if fc_fits:
        rules.append((re.compile(r"fc\.(weight|bias)"), lambda m: f"{HEAD_PREFIX}{m[1]}"))
    state, origin = _rename(raw, rules)
    dropped_fc = {k for k in state if k.startswith("fc.")}
    for key in dropped_fc:
        del state[key]
    for key, w in list(state.items()):
        target = own.get(key)
        # Inflate only when everything but the temporal axis matches; else the shape check names the key.
        if target is not None and w.ndim == 4 and target.ndim == 5 and target.shape[:2] == w.shape[:2] and target.shape[3:] == w.shape[2:]:
            state[key] = inflate_conv_weight(w, int(target.shape[2]))
    allow_missing = (HEAD_PREFIX,) if cfg.num_classes > 0 and not fc_fits else ()
    model, report = _finish(model, state, origin, source, allow_missing=allow_missing)
    report.unexpected = sorted(set(report.unexpected) | dropped_fc)
    return model, report


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "inflate_conv_weight",
    "inflate_imagenet_resnet50",
    "inflated_video_config",
    "load_mmaction2_i3d",
    "load_pytorchvideo_i3d",
    "mmaction2_video_config",
]
