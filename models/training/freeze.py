"""The fine-tuning schedule: heads first on frozen pretrained encoders, then everything.

Why: heads initialised at random send large, noisy gradients into the encoders in the first epochs and can
wreck published features before the heads have learned to use them (the usual "linear probe, then
fine-tune" recipe). While frozen, an encoder's parameters take no gradient (so AdamW neither steps nor
decays them and they stay bit-identical) and its BatchNorm layers stay in eval mode, normalising with the
checkpoint's statistics; with the feature cache the encoder is not run at all. After the frozen epochs the
encoders train with their learning rate scaled by ``encoder_lr_scale`` (typically 0.1) so fine-tuning
moves them less than the heads.
"""

from __future__ import annotations

from torch import nn

from models.training.config import TrainConfig
from models.training.parts import PART_NAMES, Part


def is_frozen(epoch: int, train_cfg: TrainConfig, parts: dict[str, Part]) -> bool:
    """Whether the pretrained encoders are frozen in (0-based) ``epoch``."""
    return bool(parts) and epoch < train_cfg.freeze_encoders


def set_frozen(parts: dict[str, Part], frozen: bool) -> None:
    for part in parts.values():
        for p in part.module.parameters():
            p.requires_grad_(not frozen)


def hold_frozen_in_eval(parts: dict[str, Part], frozen: bool) -> None:
    """After ``model.train()``: frozen encoders back to eval mode (BatchNorm keeps the checkpoint's statistics)."""
    if frozen:
        for part in parts.values():
            part.module.eval()


def param_groups(model: nn.Module, parts: dict[str, Part], train_cfg: TrainConfig) -> list[dict]:
    """AdamW groups: the heads at ``lr``, the pretrained encoders at ``lr * encoder_lr_scale``."""
    encoder_ids = {id(p) for part in parts.values() for p in part.module.parameters()}
    heads = [p for p in model.parameters() if id(p) not in encoder_ids]
    groups = [{"params": heads, "lr": train_cfg.lr, "name": "heads"}]
    if encoder_ids:
        encoders = [p for part in parts.values() for p in part.module.parameters()]
        groups.append({"params": encoders, "lr": train_cfg.lr * train_cfg.encoder_lr_scale, "name": "encoders"})
    return groups


def trainable_rows(model: nn.Module, parts: dict[str, Part]) -> list[tuple[str, int, int]]:
    """(module path, trainable parameters, frozen parameters): each pretrained encoder on its own row and
    each other module down to the level where no encoder is inside it."""
    part_paths = {part.path for part in parts.values()}
    rows: list[tuple[str, int, int]] = []

    def visit(module: nn.Module, path: str) -> None:
        inside = [p for p in part_paths if path == "" or p == path or p.startswith(path + ".")]
        if path and (path in part_paths or not inside):
            params = list(module.parameters())
            if params:
                trainable = sum(p.numel() for p in params if p.requires_grad)
                rows.append((path, trainable, sum(p.numel() for p in params) - trainable))
            return
        own = [p for p in module.parameters(recurse=False)]
        if own:
            trainable = sum(p.numel() for p in own if p.requires_grad)
            rows.append((f"{path or '(top)'} (own)", trainable, sum(p.numel() for p in own) - trainable))
        for name, child in module.named_children():
            visit(child, f"{path}.{name}" if path else name)

    visit(model, "")
    return rows


def describe_phase(title: str, model: nn.Module, parts: dict[str, Part]) -> str:
    """The log's table of what trains in a phase, parameter counts per module."""
    rows = trainable_rows(model, parts)
    width = max([len(r[0]) for r in rows] + [6])
    names = {part.path: PART_NAMES[part.modality] for part in parts.values()}
    lines = [title, f"  {'module':<{width}}  {'trainable':>12}  {'frozen':>12}"]
    for path, trainable, frozen in rows:
        note = f"  ({names[path]})" if path in names else ""
        lines.append(f"  {path:<{width}}  {trainable:>12,}  {frozen:>12,}{note}")
    total_t = sum(r[1] for r in rows)
    total_f = sum(r[2] for r in rows)
    lines.append(f"  {'total':<{width}}  {total_t:>12,}  {total_f:>12,}")
    return "\n".join(lines)
