"""Every number of the evaluation report, from one table of windows (rows) and predictions (``pred_<model>``).

The table is what ``neopain train`` writes as predictions.csv (out-of-fold) or what an external evaluation
builds from a dataset (models/evaluation/table.py): ``window_id``, ``subject_id``, ``gestational_age_weeks``,
``skin_tone_group``, ``nips_mean_rater``, ``rater_*``, ``pred_<model>``; optionally ``fold``, the loader's
per-window availability (``avail_*``, ``intubated``) and the synthetic truth (``truth_total``,
``confounder_*``). Every model is compared with the mean rater, the ceiling (models/evaluation/truth.py) and
a constant predictor (the training median), each infant being the unit of the paired tests.
"""

from __future__ import annotations

from dataclasses import asdict
from itertools import combinations

import numpy as np

from models import stats
from models.evaluation.truth import CONFOUNDER_PREFIX, ceiling, confounder_columns

GA_GROUPS = (("extremely/very preterm (<32 w)", 0.0, 32.0), ("moderate/late preterm (32-37 w)", 32.0, 37.0),
             ("term (>=37 w)", 37.0, 99.0))
PRED_PREFIX = "pred_"
CONSTANT = "constant median"  # the yardstick's name in tables and plots
# Modality availability groups: name -> (columns that must be 1, columns that must be 0). Windows may fall in
# several; "all present" is the reference the others are read against.
AVAILABILITY_GROUPS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("all modalities present", ("avail_face_visible", "avail_audio", "avail_vitals_valid"), ()),
    ("face hidden", (), ("avail_face_visible",)),
    ("intubated", ("intubated",), ()),
    ("no cry detected", ("avail_audio",), ("avail_cry_detected",)),
    ("monitor missing", (), ("avail_vitals_valid",)),
)


def model_labels(cols: dict[str, np.ndarray]) -> list[str]:
    return [k[len(PRED_PREFIX):] for k in cols if k.startswith(PRED_PREFIX)]


def model_metrics(pred: np.ndarray, ref: np.ndarray, subjects: np.ndarray) -> dict[str, object]:
    pair = np.stack([pred, ref], axis=1)
    return {
        "n_windows": int(len(pred)),
        "n_infants": int(len(np.unique(subjects))),
        "mae": stats.mae(pred, ref),
        "mae_ci": list(stats.subject_bootstrap_mae_ci(pred, ref, subjects)),
        "rmse": stats.rmse(pred, ref),
        "pearson_r": stats.pearson_r(pred, ref),
        "icc_a1": asdict(stats.icc_absolute(pair)),
        "icc_c1": asdict(stats.icc_consistency(pair)),
        "bland_altman": asdict(stats.bland_altman(pred, ref, subjects)),
    }


def group_mae(pred: np.ndarray, ref: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {str(g): stats.mae(pred[groups == g], ref[groups == g]) for g in np.unique(groups) if str(g)}


def ga_groups(ga_weeks: np.ndarray) -> np.ndarray:
    labels = np.empty(len(ga_weeks), dtype=object)
    labels[:] = ""
    for name, lo, hi in GA_GROUPS:
        labels[(ga_weeks >= lo) & (ga_weeks < hi)] = name
    return labels.astype(str)


def constant_median(cols: dict[str, np.ndarray], training_median: float | None, source: str | None) -> tuple[np.ndarray, str]:
    """The yardstick's prediction per window and what its median is.

    Cross-validation (a ``fold`` column): each fold gets the median of the other folds' mean-rater NIPS, the
    constant a model trained on those folds could have learnt. Otherwise the training median the model
    carries (its card), else the evaluated data's own median (an oracle constant, said so).
    """
    ref = cols["nips_mean_rater"]
    if "fold" in cols:
        folds = cols["fold"].astype(int)
        pred = np.empty(len(ref))
        for f in np.unique(folds):
            pred[folds == f] = float(np.median(ref[folds != f])) if (folds != f).any() else float(np.median(ref))
        return pred, "median of the training folds' mean-rater NIPS, per fold"
    if training_median is not None:
        return np.full(len(ref), float(training_median)), f"training median {training_median:.2f} ({source})"
    value = float(np.median(ref))
    return np.full(len(ref), value), (f"median {value:.2f} of the evaluated data itself (an oracle: the model "
                                      "carries no training median)")


def availability(cols: dict[str, np.ndarray], pred: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, object]]:
    """MAE per availability group (only groups whose columns the table has)."""
    out: dict[str, dict[str, object]] = {}
    for name, ones, zeros in AVAILABILITY_GROUPS:
        if not all(c in cols for c in ones + zeros):
            continue
        mask = np.ones(len(ref), dtype=bool)
        for c in ones:
            mask &= cols[c].astype(float) == 1
        for c in zeros:
            mask &= cols[c].astype(float) == 0
        out[name] = _masked(pred, ref, cols["subject_id"], mask)
    return out


def _masked(pred: np.ndarray, ref: np.ndarray, subjects: np.ndarray, mask: np.ndarray) -> dict[str, object]:
    n = int(mask.sum())
    return {"n_windows": n, "n_infants": int(len(np.unique(subjects[mask]))),
            "mae": stats.mae(pred[mask], ref[mask]) if n else None}


def confounders(cols: dict[str, np.ndarray], pred: np.ndarray, ref: np.ndarray) -> dict[str, dict[str, object]]:
    """MAE on the windows with and without each ``confounder_*`` of truth.csv."""
    out = {}
    for name in confounder_columns(cols):
        flag = cols[name]
        out[name[len(CONFOUNDER_PREFIX):]] = {"present": _masked(pred, ref, cols["subject_id"], flag == 1),
                                          "absent": _masked(pred, ref, cols["subject_id"], flag == 0)}
    return out


def compute(cols: dict[str, np.ndarray], *, training_median: float | None = None,
            median_source: str | None = None) -> dict[str, object]:
    """The metrics dict of the report (metrics.json)."""
    ref, subjects = cols["nips_mean_rater"], cols["subject_id"]
    labels = model_labels(cols)
    raters = np.stack([cols[k] for k in cols if k.startswith("rater_")], axis=1)
    complete = np.isfinite(raters).all(axis=1)
    ceil = ceiling(cols)
    constant, constant_note = constant_median(cols, training_median, median_source)
    ga = ga_groups(cols["gestational_age_weeks"])
    truth_cols = {"truth_total": cols["truth_total"]} if "truth_total" in cols else {}
    metrics: dict[str, object] = {
        "inter_rater": {"icc_a1": asdict(stats.icc_absolute(raters[complete])),
                        "icc_c1": asdict(stats.icc_consistency(raters[complete])), "n_raters": int(raters.shape[1])},
        "ceiling": ceil,
        "constant_median": {"note": constant_note, **model_metrics(constant, ref, subjects)},
        "models": {}, "by_gestational_age": {}, "by_skin_tone": {}, "by_availability": {}, "by_confounder": {},
        "wilcoxon_vs_fusion": {}, "wilcoxon_vs_constant": {}, "wilcoxon_pairwise": {},
        "per_infant_mae": {}, "per_infant_windows": {str(s): int(n) for s, n in zip(*np.unique(subjects, return_counts=True))},
    }
    per_infant = {CONSTANT: stats.per_subject_mae(constant, ref, subjects)}
    for label in [*labels, CONSTANT]:
        pred = constant if label == CONSTANT else cols[PRED_PREFIX + label]
        if label != CONSTANT:
            m = model_metrics(pred, ref, subjects)
            if ceil["available"]:
                m["gap_to_ceiling"] = {"mae": m["mae"] - ceil["mae"],
                                       "icc_a1": ceil["icc_a1"]["value"] - m["icc_a1"]["value"]}
            metrics["models"][label] = m
            per_infant[label] = stats.per_subject_mae(pred, ref, subjects)
            metrics["wilcoxon_vs_constant"][label] = stats.wilcoxon_paired(per_infant[label], per_infant[CONSTANT])
        metrics["by_gestational_age"][label] = group_mae(pred, ref, ga)
        metrics["by_skin_tone"][label] = group_mae(pred, ref, cols["skin_tone_group"])
        metrics["by_availability"][label] = availability(cols, pred, ref)
        metrics["by_confounder"][label] = confounders(cols, pred, ref)
    if truth_cols:  # the ceiling per group too: where the raters themselves disagree with the truth
        known = np.isfinite(cols["truth_total"])
        sub = {k: v[known] for k, v in cols.items()}
        metrics["by_availability"]["ceiling"] = availability(sub, sub["truth_total"], sub["nips_mean_rater"])
        metrics["by_confounder"]["ceiling"] = confounders(sub, sub["truth_total"], sub["nips_mean_rater"])
    metrics["per_infant_mae"] = per_infant
    if "fusion" in labels:
        metrics["wilcoxon_vs_fusion"] = {k: stats.wilcoxon_paired(per_infant["fusion"], per_infant[k])
                                         for k in labels if k != "fusion"}
    for a, b in combinations(labels, 2):
        metrics["wilcoxon_pairwise"].setdefault(a, {})[b] = stats.wilcoxon_paired(per_infant[a], per_infant[b])
    return metrics
