"""``neopain evaluate``: a training run's report (``--run``) or an external validation (``--model ... --data``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_USAGE = 2
DEFAULT_OUT = Path("evaluation")  # --model/--data without --out: ./evaluation/<dataset folder name>


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain evaluate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by `neopain train`: report its out-of-fold predictions")
    source.add_argument("--model", action="append", metavar="[LABEL=]PATH",
                        help="a trained model to score on --data: a checkpoint (a fold's or RUN/final/<kind>.pt), a "
                        "folder of them (RUN/final), or an exported model directory (ONNX + manifest.json); "
                        "repeat for one table with per-infant paired Wilcoxon p between the models")
    parser.add_argument("--data", help="dataset root (docs/dataset.md) to score the --model(s) on")
    parser.add_argument("--out", help="report folder (default: RUN/report, or ./evaluation/<dataset name>)")
    parser.add_argument("--cache", help="decoded windows of --data (default: OUT/.cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_evaluate(args: argparse.Namespace) -> int:
    """``neopain evaluate``: 0, or 2 with one line naming the bad input."""
    from models.card import CardError
    from models.data.layout import DatasetError
    from models.engines.base import EngineError
    from models.evaluation.core import evaluate_models, evaluate_run
    from models.evaluation.predictors import ModelLoadError

    try:
        if args.run:
            if args.data:
                raise ValueError("--data goes with --model; a --run is reported on its own dataset")
            out = Path(args.out) if args.out else Path(args.run) / "report"
            evaluate_run(args.run, out)
        else:
            if not args.data:
                raise ValueError("--model needs --data DATASET to score it on")
            out = Path(args.out) if args.out else DEFAULT_OUT / Path(args.data).resolve().name
            evaluate_models(args.model, args.data, out, cache_dir=Path(args.cache) if args.cache else out / ".cache",
                            progress=not args.quiet)
    except (ModelLoadError, CardError, DatasetError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"neopain evaluate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"report: {out / 'report.md'}")
    return 0
