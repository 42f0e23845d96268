"""The pretrained encoders inside a model: what init checkpoints fill, what freezing freezes, what gets cached.

They are the networks published weights exist for: the I3D-R50 video backbone and VGGish. The cry
transformer, the vitals CNN and every head have no published weights; they start fresh and always train.
Found by type, so the same rule holds for the fusion model and every baseline that owns an encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from models.audio import VGGish
from models.video import I3DResNet

PART_TYPES: dict[str, type[nn.Module]] = {"video": I3DResNet, "audio": VGGish}
PART_NAMES = {"video": "I3D-R50", "audio": "VGGish"}


@dataclass(frozen=True)
class Part:
    """One pretrained encoder of a model: its modality, its attribute path and the module."""

    modality: str
    path: str
    module: nn.Module


def pretrained_parts(model: nn.Module) -> dict[str, Part]:
    """Modality -> :class:`Part` for each pretrained encoder ``model`` owns (none for the vitals baseline)."""
    found: dict[str, Part] = {}
    for path, module in model.named_modules():
        for modality, cls in PART_TYPES.items():
            if isinstance(module, cls):
                if modality in found:
                    raise ValueError(f"{type(model).__name__} holds two {cls.__name__}: {found[modality].path}, {path}")
                found[modality] = Part(modality, path, module)
    return found


def swap_module(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    """Put ``module`` at ``path`` inside ``model``; returns the module that was there."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, name)
    setattr(parent, name, module)
    return old
