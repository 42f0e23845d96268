"""Training checkpoints: one file per model (and fold), written every epoch, resumed where it stopped.

Keys: ``model`` (state dict), ``optimiser``, ``scheduler``, ``epoch`` (epochs done), ``finished`` (training
and BatchNorm statistics final: resuming trains nothing), ``kind``, ``model_config``, ``train_config`` and
``history`` (one row per epoch: phase, mean training loss, validation MAE when a validation set was given,
seconds, including the first use of the feature cache).
``neopain export`` and ``neopain evaluate --model`` read ``model``, ``model_config`` and ``kind``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.configs import ModelConfig
from models.training.config import TrainConfig


def save_checkpoint(path: Path, model: nn.Module, optimiser: torch.optim.Optimizer, scheduler: Any, epoch: int,
                    finished: bool, kind: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    history: list[dict]) -> None:
    """Atomic write (temp file + rename), so an interrupted run never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "finished": finished,
            "kind": kind,
            "model_config": model_cfg.to_dict(),
            "train_config": asdict(train_cfg),
            "history": history,
        },
        tmp,
    )
    os.replace(tmp, path)
    history_tmp = history_path(path).with_suffix(".tmp")
    history_tmp.write_text(json.dumps(history, indent=1))
    os.replace(history_tmp, history_path(path))


def history_path(checkpoint: Path) -> Path:
    """``<kind>.history.json`` beside each checkpoint: its per-epoch history, readable without torch."""
    return checkpoint.with_suffix(".history.json")


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any] | None:
    """The checkpoint's dict, or None when there is none yet."""
    if not path.is_file():
        return None
    return torch.load(path, map_location=device, weights_only=False)
