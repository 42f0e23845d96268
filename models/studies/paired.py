"""Statistics of a multi-seed comparison: pooled MAE/ICC with infant-bootstrap CIs, and paired per-infant
differences between two models, overall or on the windows with one confounder.

Why infants are the unit: windows of one infant are not independent, so every CI resamples infants (with
all their windows) and every test pairs per-infant errors (models/stats.py, docs in ../shared/reference.md).
Why seeds are averaged per infant: a seed changes the initialisation and the fold assignment, so one
seed's per-infant error mixes the model's quality with luck of the draw; the mean over seeds is the
infant's expected error under the recipe, and the infants stay the independent unit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from models import stats

N_BOOT = 2000
BOOT_SEED = 0  # the bootstrap's generator: fixed so a report is reproducible, never tuned
ALPHA = 0.05


def _infant_index(subjects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, inverse = np.unique(np.asarray(subjects).astype(str), return_inverse=True)
    return ids, inverse


def _boot_picks(n_infants: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_infants, size=(n_boot, n_infants))


def _quantiles(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    if not values.size:
        return [float("nan"), float("nan")]
    low, high = np.quantile(values, [ALPHA / 2, 1 - ALPHA / 2])
    return [float(low), float(high)]


def pooled_metrics(preds: Sequence[np.ndarray], ref: np.ndarray, subjects: np.ndarray, *, n_boot: int = N_BOOT,
                   seed: int = BOOT_SEED) -> dict[str, object]:
    """MAE and ICC(A,1) of one model over several seeds' predictions of the same windows.

    ``mae`` is the mean of the per-seed MAEs (= the MAE over all seeds' windows pooled) and ``icc_a1`` the
    mean of the per-seed ICC(A,1) against the mean rater; both CIs resample infants with replacement, the
    same draw for every seed, so they hold the infant-to-infant variation and not the seed-to-seed one
    (which ``per_seed`` shows).
    """
    ref = np.asarray(ref, dtype=float)
    preds = [np.asarray(p, dtype=float) for p in preds]
    ids, inverse = _infant_index(subjects)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    per_seed = [{"mae": stats.mae(p, ref), "icc_a1": stats.icc_absolute(np.stack([p, ref], 1)).value} for p in preds]
    counts = np.bincount(inverse, minlength=len(ids)).astype(float)
    abs_sums = [np.bincount(inverse, weights=np.abs(p - ref), minlength=len(ids)) for p in preds]
    picks = _boot_picks(len(ids), n_boot, seed)
    boot_mae = np.mean([s[picks].sum(axis=1) / counts[picks].sum(axis=1) for s in abs_sums], axis=0)
    boot_icc = np.empty(n_boot)
    for b, pick in enumerate(picks):
        rows = np.concatenate([rows_of[i] for i in pick])
        boot_icc[b] = np.mean([_icc_or_nan(p[rows], ref[rows]) for p in preds])
    return {
        "n_seeds": len(preds), "n_windows": int(len(ref)), "n_infants": int(len(ids)),
        "mae": float(np.mean([s["mae"] for s in per_seed])), "mae_ci": _quantiles(boot_mae),
        "icc_a1": float(np.mean([s["icc_a1"] for s in per_seed])), "icc_a1_ci": _quantiles(boot_icc),
        "per_seed": per_seed,
    }


def _icc_or_nan(pred: np.ndarray, ref: np.ndarray) -> float:
    """ICC(A,1) of a bootstrap draw; NaN when the draw is degenerate (e.g. every window the same)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return stats.icc_absolute_value(np.stack([pred, ref], 1))


def per_infant_mae(preds: Sequence[np.ndarray], ref: np.ndarray, subjects: np.ndarray,
                   mask: np.ndarray | None = None) -> dict[str, float]:
    """Each infant's MAE on the selected windows, averaged over the seeds; infants without one are absent."""
    ref = np.asarray(ref, dtype=float)
    subjects = np.asarray(subjects).astype(str)
    mask = np.ones(len(ref), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if not mask.any():
        return {}
    per_seed = [stats.per_subject_mae(np.asarray(p, dtype=float)[mask], ref[mask], subjects[mask]) for p in preds]
    return {s: float(np.mean([d[s] for d in per_seed])) for s in per_seed[0]}


def paired_difference(errors_a: dict[str, float], errors_b: dict[str, float], *, n_boot: int = N_BOOT,
                      seed: int = BOOT_SEED) -> dict[str, object]:
    """Mean over infants of (MAE of A − MAE of B), its infant-bootstrap 95 % CI and the Wilcoxon p.

    Negative: A errs less. ``a_better`` counts the infants where A's error is lower.
    """
    if set(errors_a) != set(errors_b):
        raise ValueError(f"the two models cover different infants: {sorted(set(errors_a) ^ set(errors_b))[:5]}")
    infants = sorted(errors_a)
    if not infants:
        return {"n_infants": 0, "mean_diff": None, "ci": [None, None], "wilcoxon_p": None, "a_better": 0}
    diff = np.array([errors_a[s] - errors_b[s] for s in infants])
    boot = diff[_boot_picks(len(diff), n_boot, seed)].mean(axis=1)
    p = stats.wilcoxon_paired(errors_a, errors_b) if len(diff) >= 2 else None
    return {"n_infants": len(diff), "mean_diff": float(diff.mean()), "ci": _quantiles(boot), "wilcoxon_p": p,
            "a_better": int((diff < 0).sum()), "b_better": int((diff > 0).sum())}


def confounder_masks(cols: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    """``{name: windows where <prefix><name> == 1}`` for every confounder column of the table."""
    return {k[len(prefix):]: np.asarray(cols[k], dtype=float) == 1 for k in sorted(cols) if k.startswith(prefix)}
