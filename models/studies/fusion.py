"""The fusion question (issue 14, item 5): is cross-modal attention fusion better than early fusion?

One synthetic cohort with every confounder on; the same recipe cross-validated with several seeds, each
seed changing the initialisation *and* the subject-wise fold assignment (``neopain train --seed``). Per
infant, each model's MAE is averaged over the seeds; the paired difference fusion − early fusion (and each
against video alone, the strongest single modality) gets an infant-bootstrap 95 % CI and a Wilcoxon p,
overall and on the windows with each confounder (truth.csv ``confounder_*`` = 1). Whatever comes out is
reported; nothing is tuned toward a result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from models.data.synth_confounders import CONFOUNDER_PREFIX
from models.evaluation.metrics import PRED_PREFIX, constant_median
from models.evaluation.table import read_predictions
from models.evaluation.truth import TRUTH_TOTAL, join_truth, read_truth
from models.studies import paired
from models.studies.plots import fusion_plots
from models.studies.recipe import TrainRecipe, synth_step, train_step
from models.studies.report import fusion_markdown, publish
from models.studies.runner import Runner, Step

PREDICTIONS = "predictions.csv"
STUDY_JSON = "fusion_question.json"
STUDY_MD = "fusion_question.md"


@dataclass(frozen=True)
class FusionStudy:
    infants: int = 60
    cohort_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    models: tuple[str, ...] = ("fusion", "early", "video")
    recipe: TrainRecipe = field(default_factory=TrainRecipe)

    def pairs(self) -> list[tuple[str, str]]:
        """fusion − early first (the question), then every other pair in the order given."""
        return list(combinations(self.models, 2))


def steps(study: FusionStudy, work: Path) -> tuple[Step, list[Step]]:
    cohort = synth_step(work, "train", study.infants, study.cohort_seed, study.recipe.minutes)
    runs = [train_step(f"fusion seed {s}", cohort.out, work / "fusion" / f"seed{s}", study.recipe, study.models, s)
            for s in study.seeds]
    return cohort, runs


def load_seeds(runs: list[Path], data: Path) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]], list[np.ndarray]]:
    """The windows (ids, reference, truth, confounders) and each model's predictions per seed, aligned by window."""
    truth = read_truth(data)
    base: dict[str, np.ndarray] | None = None
    preds: dict[str, list[np.ndarray]] = {}
    constants: list[np.ndarray] = []
    for run in runs:
        cols = join_truth(read_predictions(run / PREDICTIONS), truth)
        order = np.argsort(cols["window_id"].astype(str), kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
        if base is None:
            base = cols
        elif not np.array_equal(base["window_id"], cols["window_id"]):
            raise ValueError(f"{run / PREDICTIONS} holds other windows than {runs[0] / PREDICTIONS}")
        for k, v in cols.items():
            if k.startswith(PRED_PREFIX):
                preds.setdefault(k[len(PRED_PREFIX):], []).append(v.astype(float))
        constants.append(constant_median(cols, None, None)[0])
    assert base is not None
    return base, preds, constants


def analyse(base: dict[str, np.ndarray], preds: dict[str, list[np.ndarray]], constants: list[np.ndarray],
            pairs: list[tuple[str, str]]) -> dict[str, object]:
    """Every number of the report from the aligned tables (pure: the unit test feeds it a hand-made table)."""
    ref, subjects = base["nips_mean_rater"].astype(float), base["subject_id"].astype(str)
    masks = {"all windows": np.ones(len(ref), dtype=bool), **paired.confounder_masks(base, CONFOUNDER_PREFIX)}
    out: dict[str, object] = {"models": {}, "subsets": {}}
    for label, p in preds.items():
        out["models"][label] = paired.pooled_metrics(p, ref, subjects)
    out["models"]["constant median"] = paired.pooled_metrics(constants, ref, subjects)
    if TRUTH_TOTAL in base and np.isfinite(base[TRUTH_TOTAL]).all():
        out["ceiling"] = paired.pooled_metrics([base[TRUTH_TOTAL].astype(float)], ref, subjects)
    for name, mask in masks.items():
        errors = {label: paired.per_infant_mae(p, ref, subjects, mask) for label, p in preds.items()}
        entry: dict[str, object] = {
            "n_windows": int(mask.sum()), "n_infants": int(len(np.unique(subjects[mask]))),
            "mae": {label: (float(np.mean([np.abs(q[mask] - ref[mask]).mean() for q in p])) if mask.any() else None)
                    for label, p in preds.items()},
            "paired": {f"{a} - {b}": paired.paired_difference(errors[a], errors[b]) for a, b in pairs},
        }
        if "ceiling" in out and mask.any():
            entry["mae"]["ceiling"] = float(np.abs(base[TRUTH_TOTAL][mask] - ref[mask]).mean())
        out["subsets"][name] = entry
    return out


def run_study(study: FusionStudy, work: Path, report_dir: Path, progress: bool = True, jobs: int = 1) -> dict[str, object]:
    cohort, runs = steps(study, work)
    runner = Runner(work, progress)
    runner.run([cohort])
    log = runner.run(runs, jobs)
    base, preds, constants = load_seeds([r.out for r in runs], cohort.out)
    result = analyse(base, preds, constants, study.pairs())
    result["study"] = {**asdict(study), "work": str(work), "cohort": str(cohort.out)}
    result["steps"] = log
    publish(report_dir, result, STUDY_JSON, STUDY_MD, fusion_plots, fusion_markdown)
    return result
