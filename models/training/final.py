"""``neopain train --final``: one model per kind trained on every infant, with its model card.

Why after (or without) cross-validation: CV estimates how well the recipe generalises and picks how long to
train; the model a site deploys should then learn from all of its infants. The final model trains for the
epochs CV chose in the same run folder (``cv_epochs.json``: the epoch with the lowest mean validation MAE over
the folds), else for ``--epochs``; the card says which. Its cosine schedule spans those epochs, so it ends at
the same low learning rate as every fold did. Checkpoints have the fold checkpoints' format
(``RUN/final/<kind>.pt``), so ``neopain export`` and ``neopain evaluate --model`` take them as they are.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from models.configs import ModelConfig
from models.samples import SampleSet
from models.training.card import build_card, write_card
from models.training.config import TrainConfig
from models.training.cv import CV_EPOCHS
from models.training.loop import train_model
from models.training.session import TrainSession

FINAL_DIR = "final"


def final_epochs(run_dir: Path, kind: str, train_cfg: TrainConfig) -> tuple[int, str, dict | None]:
    """(epochs, source, the CV choice record): CV's best epoch for ``kind`` when the run folder has one."""
    path = run_dir / CV_EPOCHS
    if path.is_file():
        choice = json.loads(path.read_text())
        entry = choice.get("kinds", {}).get(kind) or {}
        if entry.get("best_epoch"):
            return int(entry["best_epoch"]), "cv", {"rule": choice["rule"], "folds": choice["folds"], **entry}
    return train_cfg.epochs, "--epochs", None


def train_final(samples: SampleSet, model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: str | Path,
                kinds: Iterable[str], session: TrainSession) -> list[Path]:
    """Train each kind on all of ``samples``; write ``RUN/final/<kind>.pt`` and its card; returns the checkpoints."""
    run_dir = Path(run_dir)
    folder = run_dir / FINAL_DIR
    written = []
    for kind in kinds:
        epochs, source, choice = final_epochs(run_dir, kind, train_cfg)
        cfg = dataclasses.replace(train_cfg, epochs=epochs)
        session.log(f"final {kind}: {epochs} epochs on all {len(set(samples.subject_ids.tolist()))} infants "
                    f"({'chosen by cross-validation' if source == 'cv' else 'from --epochs'})")
        checkpoint = folder / f"{kind}.pt"
        train_model(kind, model_cfg, samples, cfg, checkpoint=checkpoint, desc=f"final {kind}", session=session)
        if session.dist.is_main:
            card = build_card(kind, checkpoint, model_cfg, cfg, samples, session.inits, source, choice, run_dir)
            path = write_card(card, folder)
            session.log(f"final {kind}: {checkpoint} ({card['model_version']}), card {path}")
        session.dist.barrier()
        written.append(checkpoint)
    return written
