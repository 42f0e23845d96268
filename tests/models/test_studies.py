"""The studies' statistics on a hand-made table (no training): per-infant means over seeds, the paired
difference with its bootstrap CI and Wilcoxon p, the per-confounder window selection, the verdict rule,
and the cohort subset / resume bookkeeping of the runner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sps

from models.studies import paired
from models.studies.fusion import analyse
from models.studies.report import verdict
from models.studies.runner import STEP_FILE, Step, StudyError, subset_cohort

# 5 infants x 3 windows; the reference, two seeds of two models, and one confounder on some windows.
SUBJECTS = np.repeat(["A", "B", "C", "D", "E"], 3)
REF = np.array([1, 2, 3, 0, 0, 1, 4, 5, 6, 2, 2, 2, 3, 1, 0], dtype=float)
RNG = np.random.default_rng(7)
FUSION = [REF + RNG.normal(0, 0.5, REF.size), REF + RNG.normal(0, 0.5, REF.size)]
EARLY = [REF + RNG.normal(0.3, 0.8, REF.size), REF + RNG.normal(0.3, 0.8, REF.size)]
# confounder on windows of A (2 of 3), C (1 of 3); B, D, E have none
NEIGHBOUR = np.array([1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=float)


def _by_hand(preds, mask):
    """Per-infant MAE on the masked windows, averaged over seeds, written out with loops."""
    out = {}
    for s in sorted(set(SUBJECTS)):
        rows = [i for i in range(REF.size) if SUBJECTS[i] == s and mask[i]]
        if rows:
            out[s] = sum(sum(abs(p[i] - REF[i]) for i in rows) / len(rows) for p in preds) / len(preds)
    return out


def test_paired_difference_overall_and_per_confounder_match_independent_values():
    base = {"window_id": np.arange(REF.size).astype(str), "subject_id": SUBJECTS, "nips_mean_rater": REF,
            "truth_total": np.round(REF), "confounder_neighbour_cry": NEIGHBOUR}
    constants = [np.full(REF.size, 2.0), np.full(REF.size, 1.0)]
    result = analyse(base, {"fusion": FUSION, "early": EARLY}, constants, [("fusion", "early")])

    for name, mask in (("all windows", np.ones(REF.size, bool)), ("neighbour_cry", NEIGHBOUR == 1)):
        fa, ea = _by_hand(FUSION, mask), _by_hand(EARLY, mask)
        infants = sorted(fa)
        diff = np.array([fa[s] - ea[s] for s in infants])
        got = result["subsets"][name]["paired"]["fusion - early"]
        assert got["n_infants"] == len(infants)
        assert got["mean_diff"] == pytest.approx(diff.mean())
        assert got["wilcoxon_p"] == pytest.approx(sps.wilcoxon([fa[s] for s in infants], [ea[s] for s in infants]).pvalue)
        assert got["ci"][0] <= diff.mean() <= got["ci"][1]
        assert diff.min() <= got["ci"][0] and got["ci"][1] <= diff.max()
        assert result["subsets"][name]["n_windows"] == int(mask.sum())
    assert result["subsets"]["neighbour_cry"]["n_infants"] == 2  # only A and C have neighbour-cry windows

    fusion = result["models"]["fusion"]
    per_seed = [np.mean(np.abs(p - REF)) for p in FUSION]
    assert fusion["mae"] == pytest.approx(np.mean(per_seed))
    assert [s["mae"] for s in fusion["per_seed"]] == pytest.approx(per_seed)
    assert fusion["mae_ci"][0] <= fusion["mae"] <= fusion["mae_ci"][1]
    assert result["models"]["constant median"]["mae"] == pytest.approx(
        (np.mean(np.abs(2 - REF)) + np.mean(np.abs(1 - REF))) / 2)
    assert result["ceiling"]["mae"] == pytest.approx(np.mean(np.abs(np.round(REF) - REF)))


def test_bootstrap_ci_is_the_percentile_interval_of_resampled_infant_means():
    a = {s: float(i) for i, s in enumerate("ABCDEFGH")}
    b = {s: 2.0 for s in "ABCDEFGH"}
    got = paired.paired_difference(a, b, n_boot=500, seed=3)
    diff = np.array([a[s] - b[s] for s in sorted(a)])
    picks = np.random.default_rng(3).integers(0, 8, size=(500, 8))
    assert got["ci"] == pytest.approx(list(np.quantile(diff[picks].mean(axis=1), [0.025, 0.975])))
    assert (got["a_better"], got["b_better"]) == (2, 5)


def test_verdict_follows_the_ci_rule():
    better = {"mean_diff": -0.2, "ci": [-0.3, -0.1], "wilcoxon_p": 0.001, "n_infants": 60}
    worse = {"mean_diff": 0.2, "ci": [0.1, 0.3], "wilcoxon_p": 0.001, "n_infants": 60}
    unclear = {"mean_diff": -0.05, "ci": [-0.2, 0.1], "wilcoxon_p": 0.4, "n_infants": 60}
    assert verdict("fusion - early", better).startswith("**fusion is better than early**")
    assert verdict("fusion - early", worse).startswith("**early is better than fusion**")
    assert verdict("fusion - early", unclear).startswith("No difference shown")


def test_subset_cohort_links_the_first_infants_and_a_step_refuses_another_recipe(tmp_path):
    full = tmp_path / "full"
    for sid in ("S001", "S002", "S003"):
        (full / sid / "R01").mkdir(parents=True)
    (full / "subjects.csv").write_text("subject_id,x\nS001,1\nS002,2\nS003,3\n")
    sub = subset_cohort(full, 2, tmp_path / "first2")
    assert (sub / "subjects.csv").read_text() == "subject_id,x\nS001,1\nS002,2\n"
    assert sorted(p.name for p in sub.iterdir() if p.is_dir()) == ["S001", "S002"]
    assert (sub / "S002" / "R01").is_dir()
    with pytest.raises(StudyError, match="has 3"):
        subset_cohort(full, 4, tmp_path / "first4")

    step = Step("x", ["train", "--epochs", "12"], tmp_path / "run")
    assert not step.done()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / STEP_FILE).write_text(json.dumps({"args": ["train", "--epochs", "12"], "wall_s": 1.0}))
    assert step.done()
    with pytest.raises(StudyError, match="--epochs 20"):
        Step("x", ["train", "--epochs", "20"], tmp_path / "run").done()


def test_rerun_keeps_the_hand_written_reading_and_bad_options_exit_2(tmp_path, capsys):
    from appliance.cli import main
    from models.studies.report import KEEP_MARKER, write_keeping

    path = tmp_path / "r.md"
    write_keeping(path, "numbers v1")
    path.write_text(path.read_text() + "my reading\n")
    write_keeping(path, "numbers v2")
    assert path.read_text() == f"numbers v2\n\n{KEEP_MARKER}\nmy reading\n"

    assert main(["study", "fusion", "--work", str(tmp_path), "--seeds", "0,x"]) == 2
    assert "--seeds must be comma-separated integers, got '0,x'" in capsys.readouterr().err
    assert main(["study", "learning-curve", "--work", str(tmp_path), "--sizes", "15,90"]) == 2
    assert "--sizes 90 exceeds --cohort-infants 60" in capsys.readouterr().err


def test_a_learning_curve_extended_to_a_larger_cohort_reuses_every_size_it_has(tmp_path):
    """Each size's training cohort is named like the cohort of that size (the first n infants are that cohort),
    so the runs of a 60-infant study are the runs a 300-infant study with those sizes asks for."""
    from models.studies.learning_curve import CurveStudy, steps

    def train_args(study):
        return {n: train.args for n, train, _ in steps(study, tmp_path)[2]}

    small = train_args(CurveStudy(sizes=(15, 60), cohort_infants=60))
    large = train_args(CurveStudy(sizes=(15, 60, 300), cohort_infants=300))
    assert large[15] == small[15] and large[60] == small[60]
    full, _, _ = steps(CurveStudy(sizes=(15, 60, 300), cohort_infants=300), tmp_path)
    assert large[300][large[300].index("--data") + 1] == str(full.out)
    assert large[60][large[60].index("--data") + 1] == str(full.out.with_name("train-s0-n60"))
