"""``neopain study fusion`` and ``neopain study learning-curve``: the options of each study and their runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.configs import CONFIGS
from models.studies.fusion import FusionStudy
from models.studies.learning_curve import CurveStudy
from models.studies.recipe import DEFAULT_WORK, TrainRecipe
from models.studies.runner import StudyError

EXIT_USAGE = 2
DEFAULT_REPORT = Path("docs") / "benchmarks"


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{flag} must be non-negative integers, got {text!r}")
    return values


def _common(parser: argparse.ArgumentParser, models: tuple[str, ...]) -> None:
    r = TrainRecipe()
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help=f"where cohorts and runs are kept; a rerun skips finished steps (default {DEFAULT_WORK})")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT,
                        help=f"folder for the Markdown report, PNGs and JSON (default {DEFAULT_REPORT})")
    parser.add_argument("--models", default=",".join(models), help=f"model kinds (default {','.join(models)})")
    parser.add_argument("--config", default=r.config, choices=sorted(CONFIGS))
    parser.add_argument("--folds", type=int, default=r.folds, help=f"CV folds (default {r.folds})")
    parser.add_argument("--epochs", type=int, default=r.epochs, help=f"training epochs (default {r.epochs})")
    parser.add_argument("--minutes", type=float, default=r.minutes, help=f"minutes per recording (default {r.minutes:g})")
    parser.add_argument("--jobs", type=int, default=1, help="independent runs side by side, each single-threaded (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _recipe(args: argparse.Namespace) -> TrainRecipe:
    if args.epochs < 1 or args.folds < 2 or not args.minutes > 0:
        raise ValueError(f"--epochs must be >= 1 (got {args.epochs}), --folds >= 2 (got {args.folds}), "
                         f"--minutes > 0 (got {args.minutes})")
    return TrainRecipe(args.config, args.folds, args.epochs, args.minutes)


def add_fusion_arguments(parser: argparse.ArgumentParser) -> None:
    d = FusionStudy()
    _common(parser, d.models)
    parser.add_argument("--infants", type=int, default=d.infants, help=f"cohort size (default {d.infants})")
    parser.add_argument("--cohort-seed", type=int, default=d.cohort_seed)
    parser.add_argument("--seeds", default=",".join(map(str, d.seeds)),
                        help="training seeds: each changes initialisation and folds (default 0,1,2)")


def add_curve_arguments(parser: argparse.ArgumentParser) -> None:
    d = CurveStudy()
    _common(parser, d.models)
    parser.add_argument("--sizes", default=",".join(map(str, d.sizes)),
                        help=f"training cohort sizes (default {','.join(map(str, d.sizes))})")
    parser.add_argument("--cohort-seed", type=int, default=d.cohort_seed)
    parser.add_argument("--cohort-infants", type=int, default=d.cohort_infants,
                        help=f"the training cohort the sizes are the first infants of (default {d.cohort_infants})")
    parser.add_argument("--test-infants", type=int, default=d.test_infants)
    parser.add_argument("--test-seed", type=int, default=d.test_seed)
    parser.add_argument("--train-seed", type=int, default=d.train_seed)


def _fail(command: str, exc: Exception) -> int:
    print(f"neopain study {command}: error: {exc}", file=sys.stderr)
    return EXIT_USAGE if isinstance(exc, ValueError) else 1


def _run(command: str, study: object, module: object, args: argparse.Namespace) -> int:
    """Run a checked study; a failed step or a --work made by another recipe is exit 1, with its reason."""
    try:
        module.run_study(study, args.work, args.report, progress=not args.quiet, jobs=args.jobs)
    except StudyError as exc:
        return _fail(command, exc)
    print(f"wrote {args.report / module.STUDY_MD}")
    return 0


def run_fusion(args: argparse.Namespace) -> int:
    from models.studies import fusion

    try:
        study = FusionStudy(args.infants, args.cohort_seed, _ints(args.seeds, "--seeds"),
                            tuple(args.models.split(",")), _recipe(args))
        if study.infants < 2 * study.recipe.folds:
            raise ValueError(f"--infants {study.infants} is too few for --folds {study.recipe.folds}")
        if len(study.models) < 2:
            raise ValueError(f"--models needs two kinds to compare, got {args.models!r}")
    except ValueError as exc:
        return _fail("fusion", exc)
    return _run("fusion", study, fusion, args)


def run_curve(args: argparse.Namespace) -> int:
    from models.studies import learning_curve

    try:
        study = CurveStudy(_ints(args.sizes, "--sizes"), args.cohort_seed, args.cohort_infants, args.test_infants,
                           args.test_seed, args.train_seed, tuple(args.models.split(",")), _recipe(args))
        if max(study.sizes) > study.cohort_infants:
            raise ValueError(f"--sizes {max(study.sizes)} exceeds --cohort-infants {study.cohort_infants}")
        if min(study.sizes) < 2 or study.test_infants < 2:
            raise ValueError(f"--sizes and --test-infants need >= 2 infants, got {args.sizes} and {args.test_infants}")
    except ValueError as exc:
        return _fail("learning-curve", exc)
    return _run("learning-curve", study, learning_curve, args)
