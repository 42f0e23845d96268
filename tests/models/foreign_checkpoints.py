"""Foreign checkpoints as their own libraries lay them out, written by tests and fed to our loaders.

Shared by the checkpoint-loader tests and the training tests (``neopain train --init-video/--init-audio``).
The foreign names come from mappings written independently of the loaders (split-based renames, and
torchvggish's module re-created from its source), so a wrong rule in either direction shows as a failed
load or different weights.

``TorchVGGish`` re-creates torchvggish's own module (harritaylor/torchvggish ``vggish.VGG``: ``make_layers``
over [64, M, 128, M, 256, 256, M, 512, 512, M], transpose to NHWC, fc stack ending in a ReLU).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic random, so a tensor loaded into the wrong place changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
    return model.eval()


# --- independent rename: our (pytorchvideo) names -> mmaction2's -------------------------------------

MM_LAYER = {"1": "layer1", "3": "layer2", "4": "layer3", "5": "layer4"}


def to_mmaction2(key: str) -> str:
    parts = key.split(".")
    assert parts[0] == "blocks", key
    if parts[1] == "0":
        return ".".join(["backbone", "conv1", {"conv": "conv", "norm": "bn"}[parts[2]], *parts[3:]])
    if parts[1] == "6":
        return ".".join(["cls_head", "fc_cls", parts[-1]])
    layer, block, branch = MM_LAYER[parts[1]], parts[3], parts[4]
    if branch == "branch2":
        kind, letter = parts[5].split("_")
        conv = "conv" + str("abc".index(letter) + 1)
        return ".".join(["backbone", layer, block, conv, "conv" if kind == "conv" else "bn", *parts[6:]])
    sub = "conv" if branch == "branch1_conv" else "bn"
    return ".".join(["backbone", layer, block, "downsample", sub, *parts[5:]])


def foreign_state(model: nn.Module, rename: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """``model``'s state dict under foreign names (cloned tensors)."""
    return {rename(k): v.clone() for k, v in model.state_dict().items()}


class TorchVGGish(nn.Module):
    def __init__(self, channels: tuple[int, int, int, int], fc: int, emb: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        layers: list[nn.Module] = []
        in_channels = 1
        for v in [c1, "M", c2, "M", c3, c3, "M", c4, c4, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(c4 * 4 * 6, fc), nn.ReLU(True), nn.Linear(fc, fc), nn.ReLU(True), nn.Linear(fc, emb), nn.ReLU(True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.transpose(x, 1, 3)
        x = torch.transpose(x, 1, 2)
        x = x.contiguous().view(x.size(0), -1)
        return self.embeddings(x)
