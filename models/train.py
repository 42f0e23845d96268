"""Training: subject-wise k-fold cross-validation of the fusion model and its baselines on the same folds.

L1 loss on the NIPS total (the clinical error measure) plus a small cross-entropy on the NIPS items
(they make the score explainable and regularise the shared trunk); AdamW; one checkpoint per model and
fold, written every epoch and resumed from where it stopped. CPU by default, CUDA when present, and
several GPUs through ``torchrun`` (DistributedDataParallel; rank 0 alone writes files).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.configs import NIPS_ITEMS, ModelConfig
from models.estimator import BASELINES, create_baseline, create_pain_estimator
from models.samples import SampleSet, subject_folds

MODEL_KINDS = ("fusion",) + BASELINES


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-2
    item_loss_weight: float = 0.1
    folds: int = 4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


def create_model(kind: str, cfg: ModelConfig) -> nn.Module:
    if kind == "fusion":
        return create_pain_estimator(cfg)
    return create_baseline(kind, cfg)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("training device 'cuda' requested but CUDA is not available")
    return torch.device(name)


class _Distributed:
    """torchrun's environment, when present: rank, world size, and the process group."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        device = resolve_device(requested)
        if self.enabled and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's share; equal lengths on every rank so DDP's collective steps stay in lockstep."""
        if not self.enabled:
            return order
        usable = len(order) // self.world_size * self.world_size
        return order[:usable][self.rank :: self.world_size]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def item_targets(items: torch.Tensor) -> list[torch.Tensor]:
    """Rounded mean rater item scores as class indices, one tensor per NIPS item."""
    return [items[:, i].round().clamp(0, n - 1).long() for i, (_, n) in enumerate(NIPS_ITEMS)]


def loss_fn(outputs: tuple[torch.Tensor, ...], nips: torch.Tensor, items: torch.Tensor, item_weight: float) -> torch.Tensor:
    pred, item_logits, _ = outputs
    loss = F.l1_loss(pred, nips)
    if item_weight > 0:
        offset = 0
        for target, (_, n) in zip(item_targets(items), NIPS_ITEMS):
            loss = loss + item_weight * F.cross_entropy(item_logits[:, offset : offset + n], target) / len(NIPS_ITEMS)
            offset += n
    return loss


def train_model(
    kind: str,
    model_cfg: ModelConfig,
    train_set: SampleSet,
    train_cfg: TrainConfig,
    checkpoint: Path | None = None,
    desc: str = "",
    progress: bool = True,
) -> nn.Module:
    """Train one model; resumes from ``checkpoint`` (model, optimiser and epoch) when it exists."""
    dist = _Distributed()
    device = dist.device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    model = create_model(kind, model_cfg).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(train_cfg.epochs, 1))
    start_epoch, finished = 0, False
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        finished = bool(state.get("finished", False))
    if finished:  # complete checkpoint: nothing to train, statistics already final
        return model.eval()
    wrapped = dist.wrap(model, device)
    generator = torch.Generator().manual_seed(train_cfg.seed)
    for _ in range(start_epoch):  # keep the shuffling sequence identical after a resume
        torch.randperm(len(train_set), generator=generator)
    epochs = range(start_epoch, train_cfg.epochs)
    bar = tqdm(epochs, desc=desc or kind, unit="epoch", disable=not (dist.is_main and progress), leave=False)
    for epoch in bar:
        wrapped.train()
        order = dist.shard(torch.randperm(len(train_set), generator=generator))
        losses = []
        for start in range(0, len(order), train_cfg.batch_size):
            index = order[start : start + train_cfg.batch_size]
            if len(index) < 2:  # BatchNorm needs two samples
                continue
            inputs, nips, items = train_set.batch(index)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            loss = loss_fn(wrapped(**inputs), nips.to(device), items.to(device), train_cfg.item_loss_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scheduler.step()
        bar.set_postfix(loss=f"{np.mean(losses) if losses else float('nan'):.3f}")
        if checkpoint is not None and dist.is_main:
            _save_checkpoint(checkpoint, model, optimiser, scheduler, epoch + 1, False, kind, model_cfg, train_cfg)
    # Every rank sees the whole training set here, so the statistics agree across ranks.
    recompute_batchnorm(model, train_set, train_cfg.batch_size)
    if checkpoint is not None and dist.is_main:
        _save_checkpoint(checkpoint, model, optimiser, scheduler, train_cfg.epochs, True, kind, model_cfg, train_cfg)
    dist.barrier()
    return model.eval()


def _save_checkpoint(path: Path, model: nn.Module, optimiser: torch.optim.Optimizer, scheduler: object, epoch: int,
                     finished: bool, kind: str, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Atomic write (temp file + rename), so an interrupted run never leaves a torn checkpoint.

    ``finished`` marks a checkpoint whose training and BatchNorm statistics are final: resuming
    from it trains nothing and recomputes nothing.
    """
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
        },
        tmp,
    )
    os.replace(tmp, path)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, samples: SampleSet, batch_size: int = 32) -> None:
    """Replace BatchNorm running statistics by exact averages over ``samples`` ("precise BN").

    Why: the running averages kept during training (momentum 0.1) trail weights that changed every
    step, so with few steps per epoch they describe an earlier model; exact averages for the final
    weights remove that lag as a source of difference between otherwise equal runs. One pass in
    train mode for the BatchNorm layers only (dropout and modality dropout stay off), with a
    cumulative average (``momentum=None``), as SlowFast's "precise BN". Applied identically to every
    model kind.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(samples) < 2:
        return
    device = next(model.parameters()).device
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for start in range(0, len(samples), batch_size):
        index = torch.arange(start, min(start + batch_size, len(samples)))
        if len(index) < 2:
            continue
        inputs, _, _ = samples.batch(index)
        model(**{k: v.to(device) for k, v in inputs.items()})
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, samples: SampleSet, batch_size: int = 64) -> np.ndarray:
    """NIPS predictions (N,) of ``model`` on ``samples``, in eval mode on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(samples), batch_size):
        index = torch.arange(start, min(start + batch_size, len(samples)))
        inputs, _, _ = samples.batch(index)
        out.append(model(**{k: v.to(device) for k, v in inputs.items()})[0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def cross_validate(
    samples: SampleSet,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    kinds: Iterable[str] = MODEL_KINDS,
    progress: bool = True,
) -> Path:
    """Out-of-fold predictions of every model kind on the same subject-wise folds.

    Writes ``out_dir/predictions.csv`` (one row per window: ids, metadata, each rater's total, the mean
    rater NIPS, and one ``pred_<kind>`` column per model) and ``out_dir/folds.json``; returns the CSV path.
    """
    out_dir = Path(out_dir)
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown:
        raise ValueError(f"unknown model kinds {unknown}; choose from {MODEL_KINDS}")
    folds = subject_folds(samples.subject_ids, train_cfg.folds, train_cfg.seed)
    dist = _Distributed()
    preds = {k: np.full(len(samples), np.nan) for k in kinds}
    fold_of = np.full(len(samples), -1)
    jobs = [(f, k) for f in range(len(folds)) for k in kinds]
    for fold, kind in tqdm(jobs, desc="cross-validation", unit="model", disable=not (dist.is_main and progress)):
        test_idx = folds[fold]
        train_idx = np.setdiff1d(np.arange(len(samples)), test_idx)
        model = train_model(
            kind, model_cfg, samples.subset(train_idx), train_cfg,
            checkpoint=out_dir / "checkpoints" / f"fold{fold}" / f"{kind}.pt", desc=f"fold {fold} {kind}",
            progress=progress,
        )
        preds[kind][test_idx] = predict(model, samples.subset(test_idx))
        fold_of[test_idx] = fold
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "folds.json").write_text(
            json.dumps({str(i): sorted(set(samples.subject_ids[f].tolist())) for i, f in enumerate(folds)}, indent=1)
        )
        write_predictions(out_dir / "predictions.csv", samples, fold_of, preds)
    return out_dir / "predictions.csv"


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


def prepare_samples(data_root: str | Path, out_dir: str | Path, cfg: ModelConfig, progress: bool = True) -> SampleSet:
    """Load the dataset's windows and pre-process them once; cached as ``out_dir/samples.<config>.pt``."""
    from models.data.loader import load_windows
    from models.samples import samples_from_windows

    out_dir = Path(out_dir)
    cache = out_dir / f"samples.{cfg.name}.pt"
    if cache.is_file():
        return SampleSet.load(cache)
    windows = load_windows(data_root, progress=progress, cache_dir=out_dir / "window-cache")
    samples = samples_from_windows(windows, cfg, progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples.save(cache)
    return samples


def run_training(
    data_root: str | Path,
    out_dir: str | Path,
    cfg: ModelConfig,
    train_cfg: TrainConfig,
    kinds: Iterable[str] = MODEL_KINDS,
    progress: bool = True,
) -> Path:
    """``neopain train``: windows -> samples -> k-fold training of every model kind -> predictions.csv."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "run.json").write_text(
        json.dumps({"data": str(data_root), "model_config": cfg.to_dict(), "train_config": asdict(train_cfg), "kinds": list(kinds)}, indent=1)
    )
    samples = prepare_samples(data_root, out_dir, cfg, progress=progress)
    return cross_validate(samples, cfg, train_cfg, out_dir, kinds, progress=progress)


def add_train_arguments(parser: "argparse.ArgumentParser") -> None:  # noqa: F821
    """Arguments of ``neopain train``."""
    d = TrainConfig()
    parser.add_argument("--data", required=True, help="dataset root (see docs/dataset.md)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, samples cache, predictions.csv")
    parser.add_argument("--config", default="tiny", choices=["tiny", "full"], help="network size (default: tiny)")
    parser.add_argument("--models", default=",".join(MODEL_KINDS), help="comma-separated model kinds")
    parser.add_argument("--folds", type=int, default=d.folds)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: CUDA when present)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_train(args: "argparse.Namespace") -> int:  # noqa: F821
    """``neopain train``: returns the exit code."""
    from models.configs import get_config

    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, folds=args.folds, seed=args.seed, device=args.device
    )
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    path = run_training(args.data, args.out, get_config(args.config), train_cfg, kinds, progress=not args.quiet)
    print(f"out-of-fold predictions: {path}")
    return 0
