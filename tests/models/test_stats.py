"""Our statistics against pingouin and scipy on the same data, and against hand-made cases."""

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats as sps

from models import stats


@pytest.fixture
def ratings() -> np.ndarray:
    """30 infants x 3 raters with a rater bias and noise: ICC between 0 and 1, A < C."""
    rng = np.random.default_rng(7)
    truth = rng.uniform(0, 7, size=30)
    return np.stack([truth + rng.normal(0, 0.8, 30) + bias for bias in (0.0, 0.7, -0.3)], axis=1)


def _pingouin(ratings: np.ndarray) -> pd.DataFrame:
    n, k = ratings.shape
    long = pd.DataFrame(
        {"subject": np.repeat(np.arange(n), k), "rater": np.tile(np.arange(k), n), "score": ratings.ravel()}
    )
    from pingouin.config import _no_rounding  # pingouin rounds CI95 to 2 decimals for display by default

    with _no_rounding():
        return pg.intraclass_corr(long, targets="subject", raters="rater", ratings="score").set_index("Type")


def test_icc_matches_pingouin(ratings):
    table = _pingouin(ratings)
    for ours, row in ((stats.icc_absolute(ratings), "ICC(A,1)"), (stats.icc_consistency(ratings), "ICC(C,1)")):
        assert ours.value == pytest.approx(table.loc[row, "ICC"], abs=1e-10)
        low, high = table.loc[row, "CI95"]
        assert ours.ci_low == pytest.approx(low, abs=1e-8)
        assert ours.ci_high == pytest.approx(high, abs=1e-8)
    assert stats.icc_absolute(ratings).value < stats.icc_consistency(ratings).value  # the bias costs agreement


def test_icc_two_raters_matches_pingouin():
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 7, 12)
    ratings = np.stack([truth, truth + rng.normal(0.5, 0.5, 12)], axis=1)
    table = _pingouin(ratings)
    assert stats.icc_absolute(ratings).value == pytest.approx(table.loc["ICC(A,1)", "ICC"], abs=1e-10)
    assert stats.icc_consistency(ratings).value == pytest.approx(table.loc["ICC(C,1)", "ICC"], abs=1e-10)


def test_icc_perfect_agreement_is_one():
    truth = np.linspace(0, 7, 10)
    ratings = np.stack([truth, truth], axis=1) + np.array([[0.0, 1e-9]])
    assert stats.icc_absolute(ratings).value == pytest.approx(1.0, abs=1e-6)


def test_icc_rejects_bad_input():
    with pytest.raises(ValueError, match="matrix"):
        stats.icc_absolute(np.ones((1, 2)))
    with pytest.raises(ValueError, match="finite"):
        stats.icc_consistency(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_errors_and_correlation_match_scipy():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 7, 200)
    pred = ref + rng.normal(0.2, 0.9, 200)
    assert stats.mae(pred, ref) == pytest.approx(np.mean(np.abs(pred - ref)))
    assert stats.rmse(pred, ref) == pytest.approx(np.sqrt(np.mean((pred - ref) ** 2)))
    assert stats.pearson_r(pred, ref) == pytest.approx(sps.pearsonr(pred, ref).statistic, abs=1e-12)
    assert np.isnan(stats.pearson_r(np.ones(5), np.arange(5.0)))
    with pytest.raises(ValueError, match="length"):
        stats.mae(pred, ref[:-1])


def test_bland_altman_single_measures():
    rng = np.random.default_rng(4)
    ref = rng.uniform(0, 7, 100)
    pred = ref + rng.normal(0.5, 1.0, 100)
    ba = stats.bland_altman(pred, ref)
    d = pred - ref
    assert ba.bias == pytest.approx(d.mean())
    assert ba.loa_high - ba.bias == pytest.approx(1.96 * d.std(ddof=1))
    assert not ba.repeated_measures


def test_bland_altman_repeated_measures_widens_for_subject_effects():
    """Per-infant offsets are a between-subject variance the plain SD of windows understates."""
    rng = np.random.default_rng(5)
    subjects = np.repeat(np.arange(10), 20)
    offsets = rng.normal(0, 1.0, 10)[subjects]
    ref = rng.uniform(0, 7, subjects.size)
    pred = ref + offsets + rng.normal(0, 0.3, subjects.size)
    rm = stats.bland_altman(pred, ref, subjects)
    assert rm.repeated_measures
    assert rm.bias == pytest.approx((pred - ref).mean())
    # Between-subject SD ~1.0 and within ~0.3: the total SD must be close to sqrt(1 + 0.09) (loose: 10 infants).
    assert 0.6 < rm.sd < 1.6
    # Hand computation of the 1999 formula on a balanced design: var = (MSB - MSW)/m + MSW.
    d = (pred - ref).reshape(10, 20)
    msw = np.sum((d - d.mean(axis=1, keepdims=True)) ** 2) / (200 - 10)
    msb = 20 * np.sum((d.mean(axis=1) - d.mean()) ** 2) / 9
    assert rm.sd == pytest.approx(np.sqrt((msb - msw) / 20 + msw))


def test_wilcoxon_on_per_infant_errors_matches_scipy():
    rng = np.random.default_rng(6)
    subjects = np.repeat([f"s{i}" for i in range(12)], 15)
    ref = rng.uniform(0, 7, subjects.size)
    good = stats.per_subject_mae(ref + rng.normal(0, 0.5, ref.size), ref, subjects)
    bad = stats.per_subject_mae(ref + rng.normal(0, 1.5, ref.size), ref, subjects)
    assert set(good) == set(bad) and len(good) == 12
    expected = sps.wilcoxon([good[s] for s in sorted(good)], [bad[s] for s in sorted(good)]).pvalue
    assert stats.wilcoxon_paired(good, bad) == pytest.approx(expected)
    assert stats.wilcoxon_paired(good, bad) < 0.01
    with pytest.raises(ValueError, match="different infants"):
        stats.wilcoxon_paired(good, {k: v for k, v in bad.items() if k != "s0"})
