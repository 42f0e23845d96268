"""``neopain train``: arguments, checks, and the run: init checkpoints -> samples -> CV -> final models.

Exit 2 for bad input (an option out of range, a checkpoint that does not fit the network size, a dataset
that cannot be read), with the option, the key and both values in one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from models.checkpoints.formats import AUDIO_FORMATS, AUTO, VIDEO_FORMATS, VIDEO_FAMILY_FIELDS
from models.configs import CONFIGS, ModelConfig
from models.recipe import DEFAULT_CONFIG
from models.training.config import MODEL_KINDS, TrainConfig
from models.training.session import LOG_NAME, TrainSession

FEATURE_CACHE_DIR = "feature-cache"
INIT_REPORT = "init_report.json"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain train``."""
    d = TrainConfig()
    parser.add_argument("--data", required=True, help="dataset root (see docs/dataset.md)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, samples cache, predictions.csv, final/")
    parser.add_argument("--config", default=DEFAULT_CONFIG, choices=sorted(CONFIGS),
                        help=f"network size (default: {DEFAULT_CONFIG})")
    parser.add_argument("--models", default=",".join(MODEL_KINDS), help="comma-separated model kinds")
    parser.add_argument("--folds", type=int, default=d.folds, help=f"subject-wise CV folds; 0: no CV (default {d.folds})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"training epochs (default {d.epochs})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help=f"global batch of one step, over all processes (default {d.batch_size})")
    parser.add_argument("--micro-batches", type=int, default=d.micro_batches,
                        help="micro-batches a batch is cut into (BatchNorm and random draws per micro-batch; "
                             "default: one per process). Same value, same model on 1 or N processes")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: CUDA when present)")
    init = parser.add_argument_group("published checkpoints and fine-tuning")
    init.add_argument("--init-video", metavar="PATH", help="I3D-R50 weights for every model with a video encoder")
    init.add_argument("--init-video-format", default=AUTO, choices=(AUTO,) + VIDEO_FORMATS,
                      help="format of --init-video (default: told from the file's keys)")
    init.add_argument("--init-audio", metavar="PATH", help="VGGish weights (torchvggish) for every model with an audio encoder")
    init.add_argument("--init-audio-format", default=AUTO, choices=(AUTO,) + AUDIO_FORMATS,
                      help="format of --init-audio (default: told from the file's keys)")
    init.add_argument("--freeze-encoders", type=int, default=d.freeze_encoders, metavar="EPOCHS",
                      help="train the heads on frozen pretrained encoders (I3D, VGGish) for the first EPOCHS epochs")
    init.add_argument("--encoder-lr-scale", type=float, default=d.encoder_lr_scale,
                      help=f"the pretrained encoders' learning rate as a multiple of --lr (default {d.encoder_lr_scale:g})")
    init.add_argument("--feature-cache", metavar="DIR",
                      help=f"where frozen encoders' outputs are cached (default: RUN/{FEATURE_CACHE_DIR})")
    init.add_argument("--no-feature-cache", action="store_true", help="run frozen encoders every step instead")
    parser.add_argument("--final", action="store_true",
                        help="also train each model on all infants (RUN/final/<kind>.pt + model card), for the "
                             "epochs CV chose in this run folder, else --epochs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _error(message: str) -> int:
    print(f"neopain train: error: {message}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    """``neopain train``: returns the exit code."""
    from models.checkpoints import CheckpointError
    from models.configs import get_config
    from models.data.layout import DatasetError
    from models.training.distributed import Distributed
    from models.training.init import load_init_checkpoints

    train_cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, folds=args.folds, seed=args.seed, device=args.device,
        freeze_encoders=args.freeze_encoders, encoder_lr_scale=args.encoder_lr_scale, micro_batches=args.micro_batches,
    )
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown or not kinds:
        return _error(f"--models {args.models!r}: unknown kinds {unknown}; choose from {', '.join(MODEL_KINDS)}")
    if train_cfg.folds == 0 and not args.final:
        return _error("--folds 0 trains nothing without --final")
    dist = Distributed()
    try:
        train_cfg.check(dist.world_size)
    except ValueError as exc:
        return _error(str(exc))
    base = get_config(args.config)
    try:
        cfg, inits = load_init_checkpoints(base, args.init_video, args.init_video_format, args.init_audio, args.init_audio_format)
    except CheckpointError as exc:
        return _error(f"init checkpoint does not fit the {args.config!r} networks: {exc}")
    out = Path(args.out)
    cache = None
    if train_cfg.freeze_encoders and not args.no_feature_cache:
        from models.training.feature_cache import FeatureCache

        cache = FeatureCache(Path(args.feature_cache) if args.feature_cache else out / FEATURE_CACHE_DIR, dist,
                             progress=not args.quiet)
    session = TrainSession(dist=dist, inits=inits, cache=cache, log_path=out / LOG_NAME, progress=not args.quiet)
    if cache is not None:
        cache.log = session.log
    _record_run(session, out, args, cfg, base, train_cfg, kinds)
    try:
        run_training(args.data, out, cfg, train_cfg, kinds, final=args.final, session=session)
    except DatasetError as exc:
        return _error(str(exc))
    if dist.is_main:
        print(f"run folder: {out}" + (f" (out-of-fold predictions: {out / 'predictions.csv'})" if train_cfg.folds else ""))
    return 0


def _record_run(session: TrainSession, out: Path, args: argparse.Namespace, cfg: ModelConfig, base: ModelConfig,
                train_cfg: TrainConfig, kinds: list[str]) -> None:
    """run.json and init_report.json in the run folder, and the load reports in the log (process 0)."""
    if not session.dist.is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    reports = [i.report() for i in session.inits]
    (out / INIT_REPORT).write_text(json.dumps(reports, indent=1))
    (out / "run.json").write_text(json.dumps(
        {"data": str(args.data), "model_config": cfg.to_dict(), "train_config": asdict(train_cfg), "kinds": kinds,
         "final": bool(args.final), "processes": session.dist.world_size, "init_checkpoints": reports,
         "feature_cache": str(session.cache.root) if session.cache else None}, indent=1))
    for init in session.inits:
        session.log(init.summary())
    changed = {f: getattr(cfg.video, f) for f in VIDEO_FAMILY_FIELDS if getattr(cfg.video, f) != getattr(base.video, f)}
    if changed:
        session.log(f"video pre-processing and strides follow the {session.inits[0].format} checkpoint: "
                    + ", ".join(f"{k}={v}" for k, v in changed.items()))
    if train_cfg.freeze_encoders and not session.inits:
        session.log("--freeze-encoders without --init-video/--init-audio: the frozen encoders keep their random weights")
    session.log(f"load report: {out / INIT_REPORT}" if session.inits else "no init checkpoints: training from scratch")


def run_training(
    data_root: str | Path,
    out_dir: str | Path,
    cfg: ModelConfig,
    train_cfg: TrainConfig,
    kinds: Iterable[str] = MODEL_KINDS,
    progress: bool = True,
    *,
    final: bool = False,
    session: TrainSession | None = None,
) -> Path:
    """Windows -> samples -> k-fold training of every kind (``folds >= 2``) -> final models (``final``).

    Returns the run folder.
    """
    from models.training.cv import cross_validate
    from models.training.feature_cache import window_keys
    from models.training.final import train_final
    from models.training.samples import prepare_samples

    out_dir = Path(out_dir)
    kinds = list(kinds)
    session = session or TrainSession(progress=progress, log_path=out_dir / LOG_NAME)
    samples = prepare_samples(data_root, out_dir, cfg, progress=session.progress, dist=session.dist)
    if session.cache is not None:  # hash every window's encoder inputs once; folds and kinds share them
        for modality in ("video", "audio"):
            window_keys(samples, modality)
    if train_cfg.folds >= 2:
        cross_validate(samples, cfg, train_cfg, out_dir, kinds, session=session)
    if final:
        train_final(samples, cfg, train_cfg, out_dir, kinds, session)
    return out_dir
