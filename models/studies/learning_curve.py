"""Learning curve (issue 14, item 2): each model trained on cohorts of growing size, scored on one fixed
unseen cohort, beside the ceiling (truth total vs the mean rater on that cohort).

The training cohorts are the first N infants of one synthetic cohort (:func:`models.studies.runner.subset_cohort`:
identical to synthesising N infants with that seed, and named like it), so a larger cohort only adds infants
and a study extended with larger sizes retrains none of the sizes it has. Each size trains
``neopain train --folds 0 --final`` for the recipe's fixed epochs (no CV: the epochs are the recipe's, the
same at every size) and ``neopain evaluate --model RUN/final --data TEST`` scores the models on the test
cohort, drawn with another seed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from models.studies.plots import curve_plot
from models.studies.recipe import TrainRecipe, evaluate_step, synth_step, train_step
from models.studies.report import curve_markdown, publish
from models.studies.runner import STEP_FILE, Runner, Step, subset_cohort

STUDY_JSON = "learning_curve.json"
STUDY_MD = "learning_curve.md"
METRICS = "metrics.json"


@dataclass(frozen=True)
class CurveStudy:
    sizes: tuple[int, ...] = (15, 30, 60)
    cohort_seed: int = 0
    cohort_infants: int = 60  # the cohort the sizes are the first infants of (>= the largest size)
    test_infants: int = 20
    test_seed: int = 1000
    train_seed: int = 0
    models: tuple[str, ...] = ("fusion", "early", "video", "audio", "vitals")
    recipe: TrainRecipe = field(default_factory=TrainRecipe)


def steps(study: CurveStudy, work: Path) -> tuple[Step, Step, list[tuple[int, Step, Step]]]:
    if max(study.sizes) > study.cohort_infants:
        raise ValueError(f"--sizes {max(study.sizes)} exceeds --cohort-infants {study.cohort_infants}")
    full = synth_step(work, "train", study.cohort_infants, study.cohort_seed, study.recipe.minutes)
    test = synth_step(work, "test", study.test_infants, study.test_seed, study.recipe.minutes)
    per_size = []
    for n in sorted(study.sizes):
        # The first n infants of the cohort are the cohort of n with the same seed (subset_cohort), so they
        # carry its name: a study extended to a larger cohort reuses the runs of the sizes it already has.
        data = synth_step(work, "train", n, study.cohort_seed, study.recipe.minutes).out
        run = work / "curve" / f"n{n}"
        train = train_step(f"curve train n={n}", data, run, study.recipe, study.models, study.train_seed, folds=0,
                           final=True)
        evaluate = evaluate_step(f"curve evaluate n={n}", run / "final", test.out, run / "test",
                                 work / "cohorts" / f"{test.out.name}-cache")
        per_size.append((n, train, evaluate))
    return full, test, per_size


def read_curve(per_size: list[tuple[int, Path]]) -> dict[str, object]:
    """``{models: {label: [{n, mae, mae_ci, icc_a1, icc_a1_ci}]}, ceiling, constant}`` from each size's metrics.json."""
    curve: dict[str, list] = {}
    ceiling, constants = None, []
    for n, metrics_path in per_size:
        m = json.loads(metrics_path.read_text())
        for label, entry in m["models"].items():
            curve.setdefault(label, []).append(_point(n, entry))
        constants.append(_point(n, m["constant_median"]))
        ceiling = m["ceiling"]
    return {"models": curve, "constant_median": constants, "ceiling": ceiling}


def _point(n: int, entry: dict) -> dict[str, object]:
    icc = entry["icc_a1"]
    return {"n": n, "mae": entry["mae"], "mae_ci": entry["mae_ci"], "icc_a1": icc["value"],
            "icc_a1_ci": [icc["ci_low"], icc["ci_high"]]}


def training_losses(run: Path, models: tuple[str, ...]) -> dict[str, list[float]]:
    """Each final model's training loss per epoch (``final/<kind>.history.json``), to see if epochs limit it."""
    out = {}
    for kind in models:
        path = run / "final" / f"{kind}.history.json"
        if path.is_file():
            out[kind] = [float(h["loss"]) for h in json.loads(path.read_text())]
    return out


def cv_validation(fusion_work: Path) -> dict[str, list[float]]:
    """Validation MAE per epoch averaged over folds and seeds, from the fusion study's runs (if present)."""
    curves: dict[str, list[list[float]]] = {}
    for path in sorted(fusion_work.glob("seed*/cv_epochs.json")):
        for kind, entry in json.loads(path.read_text()).get("kinds", {}).items():
            values = entry.get("mean_val_mae")
            if values:
                curves.setdefault(kind, []).append([float(v) for v in values])
    return {k: [sum(col) / len(col) for col in zip(*v)] for k, v in curves.items()}


def run_study(study: CurveStudy, work: Path, report_dir: Path, progress: bool = True, jobs: int = 1) -> dict[str, object]:
    full, test, per_size = steps(study, work)
    runner = Runner(work, progress)
    runner.run([full, test])
    for n, train, _ in per_size:
        data = Path(train.args[train.args.index("--data") + 1])
        if n != study.cohort_infants and not (data / STEP_FILE).is_file():  # not a cohort synthesised at that size
            subset_cohort(full.out, n, data)
    log = runner.run([train for _, train, _ in per_size], jobs)
    log = runner.run([evaluate for _, _, evaluate in per_size])
    result = read_curve([(n, evaluate.out / METRICS) for n, _, evaluate in per_size])
    result["training_loss"] = {n: training_losses(train.out, study.models) for n, train, _ in per_size}
    result["cv_validation_mae"] = cv_validation(work / "fusion")
    result["study"] = {**asdict(study), "work": str(work), "cohort": str(full.out), "test_cohort": str(test.out)}
    result["steps"] = log
    publish(report_dir, result, STUDY_JSON, STUDY_MD, curve_plot, curve_markdown)
    return result
