"""Loading published checkpoints into neopain's networks.

Foreign checkpoints (pytorchvideo, mmaction2, torchvggish, torchvision ImageNet ResNet-50) name their
tensors their own way. Each loader maps names to ours and then calls :func:`load_mapped_state`, which
refuses any shape mismatch and reports missing and unexpected keys by name, so a wrong checkpoint is
a clear error and never a silently half-initialised network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked (unreadable, wrong layout, wrong shapes, wrong keys)."""


@dataclass
class LoadReport:
    """What a load did: keys it could not fill and keys of the checkpoint it did not use."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {self.loaded} tensors"]
        if self.missing:
            parts.append(f"missing {len(self.missing)}: {', '.join(self.missing[:8])}" + (" ..." if len(self.missing) > 8 else ""))
        if self.unexpected:
            parts.append(
                f"unexpected {len(self.unexpected)}: {', '.join(self.unexpected[:8])}"
                + (" ..." if len(self.unexpected) > 8 else "")
            )
        return "; ".join(parts)


def read_checkpoint(path: str | Path) -> Any:
    """Read a torch checkpoint file on the CPU with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {path} is not a readable torch file: {exc}") from exc


def load_mapped_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    *,
    allow_missing: tuple[str, ...] = (),
    allow_unexpected: tuple[str, ...] = (),
) -> LoadReport:
    """Copy ``state`` (already in our key names) into ``model``.

    Shape mismatches are always refused. Missing or unexpected keys are refused unless they start with
    one of the allowed prefixes (e.g. a classifier head we deliberately drop).
    """
    own = model.state_dict()
    report = LoadReport(source=source)
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{source}: shape mismatch for {len(mismatched)} tensors: " + "; ".join(mismatched[:8]))
    report.missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    report.unexpected = sorted(k for k in state if k not in own)
    # str.startswith(()) is False, so with no allowed prefixes every key counts.
    bad_missing = [k for k in report.missing if not k.startswith(allow_missing)]
    bad_unexpected = [k for k in report.unexpected if not k.startswith(allow_unexpected)]
    if bad_missing or bad_unexpected:
        raise CheckpointError(report.summary())
    filtered = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(filtered, strict=False)
    report.loaded = len(filtered)
    return report
