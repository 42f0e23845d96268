"""The calibration fit on a synthetic site whose nurses rate one point higher than the model's raw score."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from calibration import bundle as B
from appliance.scoring.ratings import Pair
from calibration.fit import (FitRefused, add_fit_arguments, fit_calibration, fit_isotonic, fit_linear,
                             read_pairs_csv, run_fit, write_pairs_csv, write_report)
from models import stats


def synthetic_site(n_infants: int = 8, per_infant: int = 15, bias: float = 1.0, seed: int = 0) -> list[Pair]:
    """True pain z per observation; the model sees z + noise, the local nurses rate round(z + bias + noise)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n_infants):
        for j in range(per_infant):
            z = rng.uniform(0.0, 5.5)
            raw = float(np.clip(z + rng.normal(0, 0.4), 0, 7))
            nurse = float(np.clip(np.round(z + bias + rng.normal(0, 0.4)), 0, 7))
            pairs.append(Pair(raw, nurse, f"RN{j % 3}", f"I{i:02d}", 1_700_000_000.0 + 60 * j))
    return pairs


@pytest.mark.parametrize("method", ["auto", "linear", "isotonic"])
def test_map_removes_the_site_bias(method: str) -> None:
    pairs = synthetic_site()
    res = fit_calibration(pairs, method=method)
    # measured: cross-validated (held-out infants) MAE against the local reference drops substantially
    assert res.cv_mae_after < 0.7 * res.cv_mae_before
    assert res.cv_mae_before > 0.8 and res.bias_before == pytest.approx(-1.0, abs=0.25)
    assert abs(res.bias_after) < 0.2 and res.icc_after > res.icc_before
    assert res.n_infants == 8 and res.n_ratings == 120 and res.n_raters == 3
    m = res.map
    assert all(b > a for a, b in zip(m.x, m.x[1:])) and all(b >= a for a, b in zip(m.y, m.y[1:]))
    mid = np.linspace(1.5, 4.5, 31)
    assert float(np.mean(m(mid) - mid)) == pytest.approx(1.0, abs=0.3)  # the one-point shift mid-range
    if method != "auto":
        assert m.method == method


def test_refusals_name_the_reason() -> None:
    with pytest.raises(FitRefused, match="too few infants: 4"):
        fit_calibration(synthetic_site(n_infants=4, per_infant=30))
    with pytest.raises(FitRefused, match="too few ratings: 15"):
        fit_calibration(synthetic_site(n_infants=5, per_infant=3))
    # nurses agree with the model already: a map cannot improve CV MAE, so none is made
    agree = [Pair(p.nips, p.nips, p.rater, p.infant) for p in synthetic_site(bias=0.0)]
    with pytest.raises(FitRefused, match="does not improve cross-validated MAE"):
        fit_calibration(agree)
    with pytest.raises(ValueError, match=r"pairs\[0\].nips"):
        fit_calibration([Pair(1.0, 9.0, "RN", "I")])


def test_knots_reproduce_the_fits() -> None:
    rng = np.random.default_rng(1)
    raw = rng.uniform(0, 7, 200)
    ref = np.clip(raw + 1 + rng.normal(0, 0.3, 200), 0, 7)
    iso = fit_isotonic(raw, ref)
    from scipy.optimize import isotonic_regression

    order = np.argsort(raw)
    expected = np.clip(isotonic_regression(ref[order]).x, 0, 7)
    assert np.allclose(iso(raw[order]), expected, atol=1e-9) and len(iso.x) <= len(raw)
    lin = fit_linear(raw, ref)
    b, a = np.polyfit(raw, ref, 1)
    grid = np.linspace(0, 7, 57)
    assert np.allclose(lin(grid), np.clip(a + b * grid, 0, 7), atol=1e-9)
    flat = fit_linear(raw, 7 - raw)  # negative slope is not monotone: the mean instead
    assert flat.y[0] == pytest.approx(flat.y[-1])


def test_report_and_cli_write_a_bundle_that_installs(tmp_path: Path) -> None:
    pairs = synthetic_site()
    files = write_report(fit_calibration(pairs), pairs, tmp_path / "r1")
    assert files["png"].stat().st_size > 10_000 and "ICC(A,1)" in files["markdown"].read_text()

    csv = write_pairs_csv(tmp_path / "pairs.csv", pairs)
    assert read_pairs_csv(csv)[5] == pairs[5]
    key = B.generate_key(tmp_path / "device.key")
    parser = argparse.ArgumentParser()
    add_fit_arguments(parser)
    args = parser.parse_args(["--pairs", str(csv), "--out", str(tmp_path / "r2"), "--version", "site-v1",
                              "--model-version", "m-A", "--key", str(key)])
    assert run_fit(args) == 0
    v = B.install_bundle(tmp_path / "r2" / B.BUNDLE_FILE, tmp_path / "cal", B.read_key(key), model_version="m-A")
    assert v.payload["fit"]["n_infants"] == 8 and v.payload["fit"]["cv_mae_after"] < v.payload["fit"]["cv_mae_before"]
    raw = np.array([p.raw for p in pairs])
    ref = np.array([p.nips for p in pairs])
    published = np.array([v.map.apply(r) for r in raw])
    assert stats.mae(published, ref) < 0.7 * stats.mae(raw, ref)

    few = write_pairs_csv(tmp_path / "few.csv", synthetic_site(n_infants=3, per_infant=20))
    args = parser.parse_args(["--pairs", str(few), "--out", str(tmp_path / "r3")])
    assert run_fit(args) == 2 and not (tmp_path / "r3").exists()
