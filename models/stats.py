"""Clinical agreement statistics for the evaluation table: MAE, RMSE, Pearson r, ICC, Bland-Altman, Wilcoxon.

Why implemented here: the ICC forms and their F-based confidence intervals (McGraw & Wong 1996) and the
repeated-measures Bland-Altman limits (Bland & Altman 1999) are the numbers a clinical reader checks, so
the formulas are written out where they can be read; tests check them against pingouin and scipy on the
same data. Model comparisons use the Wilcoxon signed-rank test on per-infant mean absolute errors
(paired by infant, never on windows, which are not independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class ICCResult:
    """One ICC form with its 95 % confidence interval."""

    value: float
    ci_low: float
    ci_high: float
    n_subjects: int
    k_raters: int


@dataclass(frozen=True)
class BlandAltman:
    bias: float
    loa_low: float
    loa_high: float
    sd: float
    repeated_measures: bool


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=float).ravel()
    ref = np.asarray(ref, dtype=float).ravel()
    if pred.shape != ref.shape:
        raise ValueError(f"predictions ({pred.size}) and references ({ref.size}) differ in length")
    if pred.size == 0:
        raise ValueError("no observations")
    if not (np.isfinite(pred).all() and np.isfinite(ref).all()):
        raise ValueError("predictions and references must be finite")
    return pred, ref


def mae(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = _pair(pred, ref)
    return float(np.mean(np.abs(pred - ref)))


def rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = _pair(pred, ref)
    return float(np.sqrt(np.mean((pred - ref) ** 2)))


def pearson_r(pred: np.ndarray, ref: np.ndarray) -> float:
    """Pearson correlation; NaN when either series is constant (a correlation is undefined then)."""
    pred, ref = _pair(pred, ref)
    dp, dr = pred - pred.mean(), ref - ref.mean()
    denom = np.sqrt(np.sum(dp**2) * np.sum(dr**2))
    return float(np.sum(dp * dr) / denom) if denom > 0 else float("nan")


def _anova_two_way(ratings: np.ndarray) -> tuple[float, float, float, int, int]:
    """Mean squares of a two-way ANOVA without replication on an (n subjects x k raters) matrix."""
    y = np.asarray(ratings, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"ICC needs an (n>=2 subjects x k>=2 raters) matrix, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("ICC ratings must be finite (drop incomplete subjects first)")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * np.sum((y.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((y.mean(axis=0) - grand) ** 2)
    ss_err = np.sum((y - grand) ** 2) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_err / ((n - 1) * (k - 1))
    return msr, msc, mse, n, k


def icc_consistency(ratings: np.ndarray, alpha: float = 0.05) -> ICCResult:
    """ICC(C,1) (pingouin's ICC3): (MSR - MSE) / (MSR + (k-1) MSE), F-based CI."""
    msr, _, mse, n, k = _anova_two_way(ratings)
    value = (msr - mse) / (msr + (k - 1) * mse)
    df1, df2 = n - 1, (n - 1) * (k - 1)
    f_obs = msr / mse if mse > 0 else np.inf
    f_low = f_obs / sps.f.ppf(1 - alpha / 2, df1, df2)
    f_high = f_obs * sps.f.ppf(1 - alpha / 2, df2, df1)
    return ICCResult(float(value), float((f_low - 1) / (f_low + k - 1)), float((f_high - 1) / (f_high + k - 1)), n, k)


def _icc_a1(msr: float, msc: float, mse: float, n: int, k: int) -> float:
    return (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)


def icc_absolute_value(ratings: np.ndarray) -> float:
    """ICC(A,1) without its CI: for bootstrap loops, where the F quantiles of the CI cost most of the time."""
    return float(_icc_a1(*_anova_two_way(ratings)))


def icc_absolute(ratings: np.ndarray, alpha: float = 0.05) -> ICCResult:
    """ICC(A,1) (pingouin's ICC2): (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n).

    CI from McGraw & Wong (1996), with Satterthwaite's approximate degrees of freedom (the form of R's
    psych::ICC and pingouin).
    """
    msr, msc, mse, n, k = _anova_two_way(ratings)
    value = _icc_a1(msr, msc, mse, n, k)
    f_j = msc / mse if mse > 0 else np.inf
    a = k * value * f_j + n * (1 + (k - 1) * value) - k * value
    v_num = (n - 1) * (k - 1) * a**2
    v_den = (n - 1) * k**2 * value**2 * f_j**2 + (n * (1 + (k - 1) * value) - k * value) ** 2
    v = v_num / v_den
    f_up = sps.f.ppf(1 - alpha / 2, n - 1, v)
    f_lo = sps.f.ppf(1 - alpha / 2, v, n - 1)
    low = n * (msr - f_up * mse) / (f_up * (k * msc + (k * n - k - n) * mse) + n * msr)
    high = n * (f_lo * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_lo * msr)
    return ICCResult(float(value), float(low), float(high), n, k)


def bland_altman(pred: np.ndarray, ref: np.ndarray, subjects: np.ndarray | None = None) -> BlandAltman:
    """Bias and 95 % limits of agreement of ``pred - ref``.

    With ``subjects`` (several windows per infant), the repeated-measures variant of Bland & Altman (1999,
    section 5.2, true value varying within subject): the variance of a difference is the between-subject
    component plus the within-subject mean square from a one-way ANOVA of the differences by subject.
    """
    pred, ref = _pair(pred, ref)
    diff = pred - ref
    bias = float(diff.mean())
    if subjects is None:
        sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
        return BlandAltman(bias, bias - 1.96 * sd, bias + 1.96 * sd, sd, repeated_measures=False)
    subjects = np.asarray(subjects).ravel()
    if subjects.shape != diff.shape:
        raise ValueError("subjects must give one id per observation")
    ids, inverse, counts = np.unique(subjects, return_inverse=True, return_counts=True)
    n_subj, total = len(ids), diff.size
    if n_subj < 2 or total <= n_subj:
        raise ValueError("repeated-measures Bland-Altman needs >= 2 subjects and more observations than subjects")
    means = np.bincount(inverse, weights=diff) / counts
    ss_within = float(np.sum((diff - means[inverse]) ** 2))
    ss_between = float(np.sum(counts * (means - diff.mean()) ** 2))
    ms_within = ss_within / (total - n_subj)
    ms_between = ss_between / (n_subj - 1)
    divisor = (total**2 - np.sum(counts**2)) / ((n_subj - 1) * total)
    var_between = max((ms_between - ms_within) / divisor, 0.0)
    sd = float(np.sqrt(var_between + ms_within))
    return BlandAltman(bias, bias - 1.96 * sd, bias + 1.96 * sd, sd, repeated_measures=True)


def per_subject_mae(pred: np.ndarray, ref: np.ndarray, subjects: np.ndarray) -> dict[str, float]:
    """Mean absolute error per infant: the unit of the paired model comparison."""
    pred, ref = _pair(pred, ref)
    subjects = np.asarray(subjects).ravel()
    return {str(s): float(np.mean(np.abs(pred[subjects == s] - ref[subjects == s]))) for s in np.unique(subjects)}


def wilcoxon_paired(errors_a: dict[str, float], errors_b: dict[str, float]) -> float:
    """Two-sided Wilcoxon signed-rank p of per-infant errors of two models (same infants, paired)."""
    common = sorted(set(errors_a) & set(errors_b))
    if set(errors_a) != set(errors_b):
        raise ValueError("the two models were evaluated on different infants")
    a = np.array([errors_a[s] for s in common])
    b = np.array([errors_b[s] for s in common])
    if np.allclose(a, b):
        return 1.0
    return float(sps.wilcoxon(a, b).pvalue)


def subject_bootstrap_mae_ci(pred: np.ndarray, ref: np.ndarray, subjects: np.ndarray, n_boot: int = 2000,
                             seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """95 % percentile CI of the MAE by resampling infants (with all their windows) with replacement.

    Why infants: windows of one infant are not independent, so a CI over windows would be too narrow; the
    infant is the unit a second cohort varies in. Seeded, so a report is reproducible.
    """
    pred, ref = _pair(pred, ref)
    subjects = np.asarray(subjects).ravel()
    if subjects.shape != pred.shape:
        raise ValueError("subjects must give one id per observation")
    _, inverse = np.unique(subjects, return_inverse=True)
    sums = np.bincount(inverse, weights=np.abs(pred - ref))
    counts = np.bincount(inverse).astype(float)
    picks = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
    values = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
