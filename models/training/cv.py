"""Subject-wise k-fold cross-validation of every model kind on the same folds, and the epochs it chooses.

Writes ``RUN/predictions.csv`` (one row per window: ids, metadata, each rater's total, the mean rater NIPS,
one ``pred_<kind>`` column per model), ``RUN/folds.json`` and ``RUN/cv_epochs.json``: per kind, the
validation MAE of each epoch averaged over the folds, and the epoch where that mean is lowest (the first
of equals), which ``--final`` trains for.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from models.configs import ModelConfig
from models.samples import SampleSet, subject_folds
from models.training.checkpoint import history_path
from models.training.config import MODEL_KINDS, TrainConfig
from models.training.loop import predict, train_model
from models.training.session import TrainSession

CV_EPOCHS = "cv_epochs.json"
EPOCH_RULE = "the epoch with the lowest validation MAE averaged over the folds (the first of equals)"


def fold_checkpoint(out_dir: Path, fold: int, kind: str) -> Path:
    return out_dir / "checkpoints" / f"fold{fold}" / f"{kind}.pt"


def cross_validate(
    samples: SampleSet,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    kinds: Iterable[str] = MODEL_KINDS,
    progress: bool = True,
    session: TrainSession | None = None,
) -> Path:
    """Out-of-fold predictions of every model kind on the same subject-wise folds; returns the CSV path."""
    out_dir = Path(out_dir)
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown:
        raise ValueError(f"unknown model kinds {unknown}; choose from {MODEL_KINDS}")
    session = session or TrainSession(progress=progress)
    dist = session.dist
    folds = subject_folds(samples.subject_ids, train_cfg.folds, train_cfg.seed)
    preds = {k: np.full(len(samples), np.nan) for k in kinds}
    fold_of = np.full(len(samples), -1)
    jobs = [(f, k) for f in range(len(folds)) for k in kinds]
    for fold, kind in tqdm(jobs, desc="cross-validation", unit="model", disable=not (dist.is_main and session.progress)):
        test_idx = folds[fold]
        train_idx = np.setdiff1d(np.arange(len(samples)), test_idx)
        test_set = samples.subset(test_idx)
        model = train_model(
            kind, model_cfg, samples.subset(train_idx), train_cfg, checkpoint=fold_checkpoint(out_dir, fold, kind),
            desc=f"fold {fold} {kind}", session=session, val_set=test_set,
        )
        preds[kind][test_idx] = predict(model, test_set, session=session)
        fold_of[test_idx] = fold
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "folds.json").write_text(
            json.dumps({str(i): sorted(set(samples.subject_ids[f].tolist())) for i, f in enumerate(folds)}, indent=1)
        )
        write_predictions(out_dir / "predictions.csv", samples, fold_of, preds)
        (out_dir / CV_EPOCHS).write_text(json.dumps(epoch_choice(out_dir, len(folds), kinds), indent=1))
    dist.barrier()
    return out_dir / "predictions.csv"


def epoch_choice(out_dir: Path, n_folds: int, kinds: list[str]) -> dict:
    """``cv_epochs.json``'s content from the folds' histories; a kind without a complete history gets none."""
    result: dict = {"rule": EPOCH_RULE, "folds": n_folds, "kinds": {}}
    for kind in kinds:
        curves = []
        for fold in range(n_folds):
            path = history_path(fold_checkpoint(out_dir, fold, kind))
            rows = json.loads(path.read_text()) if path.is_file() else []
            curves.append([r.get("val_mae") for r in rows])
        lengths = {len(c) for c in curves}
        if len(lengths) != 1 or not curves[0] or any(v is None for c in curves for v in c):
            result["kinds"][kind] = {"best_epoch": None, "why": "no complete validation history in every fold"}
            continue
        mean = np.mean(np.array(curves, dtype=float), axis=0)
        result["kinds"][kind] = {"best_epoch": int(np.argmin(mean)) + 1, "mean_val_mae": [round(float(v), 5) for v in mean]}
    return result


def write_predictions(path: Path, samples: SampleSet, folds: np.ndarray, preds: dict[str, np.ndarray]) -> None:
    n_raters = samples.rater_totals.shape[1]
    header = ["window_id", "subject_id", "fold", "gestational_age_weeks", "skin_tone_group", "nips_mean_rater"]
    header += [f"rater_{r + 1}" for r in range(n_raters)] + [f"pred_{k}" for k in preds]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for i in range(len(samples)):
            writer.writerow(
                [samples.window_ids[i], samples.subject_ids[i], int(folds[i]), f"{samples.gestational_age_weeks[i]:.1f}",
                 samples.skin_tone_groups[i], f"{float(samples.nips[i]):.4f}"]
                + [f"{v:.4f}" for v in samples.rater_totals[i]]
                + [f"{preds[k][i]:.4f}" for k in preds]
            )
