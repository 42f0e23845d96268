"""Training one model: the epoch loop, its loss, precise BatchNorm, and prediction.

L1 loss on the NIPS total (the clinical error measure) plus a small cross-entropy on the NIPS items (they make
the score explainable and regularise the shared trunk); AdamW with a cosine schedule; a checkpoint every
epoch, resumed from where it stopped. Optional phases (:mod:`models.training.freeze`): pretrained encoders
frozen first, on cached features (:mod:`models.training.feature_cache`), then fine-tuned. CPU by default,
CUDA when present, several processes through ``torchrun`` (:mod:`models.training.distributed`; process 0
alone writes files). With a validation set, each epoch's validation MAE is kept in the checkpoint's history
(cross-validation uses it to choose the final model's epochs); it uses BatchNorm's running statistics
(under torchrun, process 0's), not the exact ones the finished model gets.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from models.configs import NIPS_ITEMS, ModelConfig
from models.estimator import create_baseline, create_pain_estimator
from models.samples import SampleSet
from models.training.checkpoint import load_checkpoint, save_checkpoint
from models.training.config import MIN_MICRO_BATCH, TrainConfig
from models.training.distributed import micro_seed, step_plan
from models.training.feature_cache import cached_samples, encoders_replaced, module_sha256
from models.training.freeze import describe_phase, hold_frozen_in_eval, is_frozen, param_groups, set_frozen
from models.training.init import InitCheckpoint, apply_init
from models.training.parts import PART_NAMES, Part, pretrained_parts
from models.training.session import TrainSession

PREDICT_BATCH = 64


def create_model(kind: str, cfg: ModelConfig) -> nn.Module:
    if kind == "fusion":
        return create_pain_estimator(cfg)
    return create_baseline(kind, cfg)


def initial_model(kind: str, cfg: ModelConfig, seed: int, inits: list[InitCheckpoint] = ()) -> nn.Module:
    """The model before its first step: built after ``torch.manual_seed(seed)``, then the init checkpoints."""
    torch.manual_seed(seed)
    model = create_model(kind, cfg)
    apply_init(model, list(inits))
    return model


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


def frozen_parts(model: nn.Module) -> dict[str, Part]:
    """The pretrained encoders of ``model`` that take no gradient now."""
    return {m: p for m, p in pretrained_parts(model).items()
            if not any(q.requires_grad for q in p.module.parameters())}


def cached_view(session: TrainSession | None, parts: dict[str, Part], *sets: SampleSet | None) -> list[SampleSet | None]:
    """Each set with the frozen ``parts``' inputs replaced by their cached outputs (computed when missing)."""
    assert session is not None and session.cache is not None
    hashes = {m: module_sha256(p.module) for m, p in parts.items()}
    return [None if s is None else cached_samples(s, {m: session.cache.features(p, s, hashes[m]) for m, p in parts.items()})
            for s in sets]


@contextlib.contextmanager
def _phase(model: nn.Module, parts: dict[str, Part], cached: list[SampleSet | None] | None, *sets: SampleSet | None
           ) -> Iterator[tuple[nn.Module, list[SampleSet | None]]]:
    """The network and data a phase runs on: with ``cached`` (the sets' cached views), the frozen ``parts``
    swapped for stand-ins reading them; else the model and the sets as they are."""
    if cached is not None:
        with encoders_replaced(model, parts):
            yield model, cached
    else:
        yield model, list(sets)


def train_model(
    kind: str,
    model_cfg: ModelConfig,
    train_set: SampleSet,
    train_cfg: TrainConfig,
    checkpoint: Path | None = None,
    desc: str = "",
    progress: bool = True,
    *,
    session: TrainSession | None = None,
    val_set: SampleSet | None = None,
) -> nn.Module:
    """Train one model; resumes from ``checkpoint`` (model, optimiser, epoch, history) when it exists."""
    session = session or TrainSession(progress=progress)
    dist = session.dist
    train_cfg.check(dist.world_size)
    micro = train_cfg.micro_batches or dist.world_size
    device = dist.device(train_cfg.device)
    model = initial_model(kind, model_cfg, train_cfg.seed, session.inits).to(device)
    parts = pretrained_parts(model)
    optimiser = torch.optim.AdamW(param_groups(model, parts, train_cfg), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(train_cfg.epochs, 1))
    start_epoch, history = 0, []
    state = load_checkpoint(checkpoint, device) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        history = list(state.get("history", []))
    last_frozen = is_frozen(train_cfg.epochs - 1, train_cfg, parts) if train_cfg.epochs else bool(parts) and train_cfg.freeze_encoders > 0
    if state is not None and state.get("finished", False):  # complete: nothing to train, statistics final
        set_frozen(parts, last_frozen)
        return model.eval()

    def save(epoch: int, finished: bool) -> None:
        if checkpoint is not None and dist.is_main:
            save_checkpoint(checkpoint, model, optimiser, scheduler, epoch, finished, kind, model_cfg, train_cfg, history)

    generator = torch.Generator().manual_seed(train_cfg.seed)
    for _ in range(start_epoch):  # keep the shuffling sequence identical after a resume
        torch.randperm(len(train_set), generator=generator)
    name = desc or kind
    bar = tqdm(range(start_epoch, train_cfg.epochs), desc=name, unit="epoch", disable=not (dist.is_main and session.progress), leave=False)
    phase: bool | None = None
    cached: list[SampleSet | None] | None = None  # the frozen phase's data, with cached encoder outputs (built once)
    use_cache = session.cache is not None
    for epoch in bar:
        frozen = is_frozen(epoch, train_cfg, parts)
        if frozen != phase:
            phase = frozen
            set_frozen(parts, frozen)
            title = _phase_title(name, epoch, train_cfg, parts, frozen, session)
            session.log(describe_phase(title, model, parts), echo_key=(kind, frozen))
        order = torch.randperm(len(train_set), generator=generator)
        started = time.perf_counter()
        if frozen and use_cache and cached is None:
            cached = cached_view(session, parts, train_set, val_set)
        with _phase(model, parts, cached if frozen and use_cache else None, train_set, val_set) as (net, (data, val_data)):
            wrapped = dist.wrap(net, device)
            wrapped.train()
            hold_frozen_in_eval(parts, frozen)
            losses = []
            for step, micro_batches in enumerate(step_plan(order, train_cfg.batch_size, micro, dist)):
                optimiser.zero_grad(set_to_none=True)
                for j, (k, index) in enumerate(micro_batches):
                    torch.manual_seed(micro_seed(train_cfg.seed, epoch, step, k))
                    inputs, nips, items = data.batch(index)
                    inputs = {key: v.to(device) for key, v in inputs.items()}
                    last = j == len(micro_batches) - 1
                    with (wrapped.no_sync() if dist.enabled and not last else contextlib.nullcontext()):
                        loss = loss_fn(wrapped(**inputs), nips.to(device), items.to(device), train_cfg.item_loss_weight)
                        (loss / len(micro_batches)).backward()
                    losses.append(loss.item())
                optimiser.step()
            val_mae = None
            if val_data is not None and len(val_data) and dist.is_main:
                val_mae = float(np.mean(np.abs(_predict(net, val_data) - val_data.nips.numpy())))
        scheduler.step()
        mean_loss = float(np.mean(losses)) if losses else float("nan")
        history.append({"epoch": epoch + 1, "phase": "frozen" if frozen else "all", "loss": mean_loss, "val_mae": val_mae,
                        "seconds": round(time.perf_counter() - started, 3)})
        bar.set_postfix(loss=f"{mean_loss:.3f}", **({"val_mae": f"{val_mae:.3f}"} if val_mae is not None else {}))
        save(epoch + 1, False)
    set_frozen(parts, last_frozen)
    # Every process sees the whole training set here, so the statistics agree across processes.
    if last_frozen and use_cache and cached is None:  # resumed after the last frozen epoch
        cached = cached_view(session, parts, train_set)
    with _phase(model, parts, cached[:1] if last_frozen and use_cache else None, train_set) as (net, (data,)):
        recompute_batchnorm(net, data, train_cfg.batch_size, skip=list(parts.values()) if last_frozen else [])
    save(train_cfg.epochs, True)
    dist.barrier()
    return model.eval()


def _phase_title(name: str, epoch: int, train_cfg: TrainConfig, parts: dict[str, Part], frozen: bool,
                 session: TrainSession) -> str:
    last = min(train_cfg.freeze_encoders, train_cfg.epochs) if frozen else train_cfg.epochs
    span = f"epochs {epoch + 1}-{last} of {train_cfg.epochs}"
    encoders = ", ".join(PART_NAMES[m] for m in parts) or "no pretrained encoder"
    if frozen:
        how = f"cached features in {session.cache.root}" if session.cache is not None else "run in eval mode, no cache"
        return f"{name}, {span}: {encoders} frozen ({how}); the rest trains at lr {train_cfg.lr:g}"
    if parts and train_cfg.encoder_lr_scale != 1.0:
        return (f"{name}, {span}: everything trains; {encoders} at lr {train_cfg.lr * train_cfg.encoder_lr_scale:g} "
                f"(x{train_cfg.encoder_lr_scale:g}), the rest at {train_cfg.lr:g}")
    return f"{name}, {span}: everything trains at lr {train_cfg.lr:g}"


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, samples: SampleSet, batch_size: int = 32, skip: list[Part] = ()) -> None:
    """Replace BatchNorm running statistics by exact averages over ``samples`` ("precise BN").

    Why: the running averages kept during training (momentum 0.1) trail weights that changed every
    step, so with few steps per epoch they describe an earlier model; exact averages for the final
    weights remove that lag as a source of difference between otherwise equal runs. One pass in
    train mode for the BatchNorm layers only (dropout and modality dropout stay off), with a
    cumulative average (``momentum=None``), as SlowFast's "precise BN". Applied identically to every
    model kind. BatchNorm inside the ``skip`` encoders (frozen ones) keeps the checkpoint's statistics.
    """
    skipped = {id(m) for part in skip for m in part.module.modules()}
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in skipped]
    if not norms or len(samples) < MIN_MICRO_BATCH:
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
        if len(index) < MIN_MICRO_BATCH:
            continue
        inputs, _, _ = samples.batch(index)
        model(**{k: v.to(device) for k, v in inputs.items()})
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def _predict(model: nn.Module, samples: SampleSet, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    device = next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(samples), batch_size):
        index = torch.arange(start, min(start + batch_size, len(samples)))
        inputs, _, _ = samples.batch(index)
        out.append(model(**{k: v.to(device) for k, v in inputs.items()})[0].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def predict(model: nn.Module, samples: SampleSet, batch_size: int = PREDICT_BATCH,
            session: TrainSession | None = None) -> np.ndarray:
    """NIPS predictions (N,) of ``model`` on ``samples``, in eval mode on the model's device.

    With a session that has a feature cache, frozen pretrained encoders are read from it instead of run
    (every process must then call this at the same point).
    """
    parts = frozen_parts(model) if session is not None and session.cache is not None else {}
    cached = cached_view(session, parts, samples) if parts else None
    with _phase(model, parts, cached, samples) as (net, (data,)):
        return _predict(net, data, batch_size)
