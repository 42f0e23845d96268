"""``neopain evaluate``: any trained model on any dataset (external validation), the ceiling, the yardstick.

Real files throughout: a synthetic cohort from the generator, the final model of ``neopain train --final`` with
its card (tests/conftest.py ``tiny_final_run``) and its export run through the device's engines
(``tiny_model_dir``), a fold-format baseline checkpoint, the report's PNGs opened as images. Every figure the
test checks is recomputed here from the dataset's own files (ratings.csv, truth.csv, subjects.csv) and the
report's predictions.csv, with pingouin and scipy as the reference statistics, not with the code under test.
The models are barely trained: what is checked is what the evaluation does with a model, not its quality.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pingouin
import pytest
import torch
from PIL import Image
from scipy import stats as sps

from appliance.cli import main
from models.configs import tiny_config
from models.estimator import create_baseline

pytestmark = pytest.mark.slow

INFANTS = 4
EXTRA_CONFOUNDER = "confounder_every_third"  # a column the test adds to truth.csv: any confounder_* is reported


def _baseline_checkpoint(path: Path, kind: str = "video", seed: int = 1) -> Path:
    """A fold checkpoint as ``neopain train`` writes one (random weights)."""
    torch.manual_seed(seed)
    cfg = tiny_config()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": create_baseline(kind, cfg).state_dict(), "model_config": cfg.to_dict(), "kind": kind,
                "epoch": 1, "finished": True}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_final_run: Path, tiny_model_dir: Path) -> dict:
    """A 4-infant cohort (half intubated); the final fusion model, its export and a fold's baseline on it."""
    tmp = tmp_path_factory.mktemp("evaluation")
    data = tmp / "cohort"
    assert main(["synth", "--out", str(data), "--infants", str(INFANTS), "--seed", "5", "--minutes", "1",
                 "--video-size", "32", "--fps", "8", "--intubated-probability", "0.5", "--quiet"]) == 0
    for truth in sorted(data.glob("*/*/truth.csv")):
        table = pd.read_csv(truth)
        table[EXTRA_CONFOUNDER] = (np.arange(len(table)) % 3 == 0).astype(int)
        table.to_csv(truth, index=False)
    final = tiny_final_run / "final"
    video = _baseline_checkpoint(tmp / "run" / "checkpoints" / "fold0" / "video.pt")
    out = tmp / "report"
    assert main(["evaluate", "--model", str(final), "--model", f"onnx={tiny_model_dir}", "--model", str(video),
                 "--data", str(data), "--out", str(out), "--quiet"]) == 0
    return {"data": data, "out": out, "card": json.loads((final / "model_card.json").read_text()),
            "final": final, "export": tiny_model_dir, "training_data": tiny_final_run.parent / "cohort"}


def _truth_and_raters(data: Path) -> pd.DataFrame:
    """Per rated window, from the dataset's files: mean rater total, truth total, confounders, subject."""
    rows = []
    for ratings_path in sorted(data.glob("*/*/ratings.csv")):
        ratings = pd.read_csv(ratings_path)
        truth = pd.read_csv(ratings_path.parent / "truth.csv").set_index("window_start_s")
        mean = ratings.groupby("window_start_s")["total"].mean().sort_index()
        for index, (start, total) in enumerate(mean.items()):
            row = {"window_id": f"{ratings_path.parent.parent.name}/{ratings_path.parent.name}/{index}",
                   "subject": ratings_path.parent.parent.name, "mean_rater": total, "truth": truth.loc[start, "total"]}
            row.update({c: truth.loc[start, c] for c in truth.columns if c.startswith("confounder_")})
            rows.append(row)
    return pd.DataFrame(rows).set_index("window_id")


def _icc_a1(a: np.ndarray, b: np.ndarray) -> float:
    long = pd.DataFrame({"target": np.tile(np.arange(len(a)), 2), "rater": np.repeat(["a", "b"], len(a)),
                         "score": np.concatenate([a, b])})
    table = pingouin.intraclass_corr(long, targets="target", raters="rater", ratings="score").set_index("Type")
    return float(table.loc["ICC(A,1)", "ICC"])


def test_report_files_and_valid_pngs(setup: dict) -> None:
    out = setup["out"]
    text = (out / "report.md").read_text()
    for name in ("scatter", "bland_altman", "agreement", "mae_by_gestational_age", "mae_by_skin_tone",
                 "mae_by_availability", "mae_by_confounder"):
        with Image.open(out / f"{name}.png") as image:
            image.verify()
        with Image.open(out / f"{name}.png") as image:
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200, (name, pixels.shape)
        assert pixels.std() > 10, f"{name}.png is blank"
        assert f"({name}.png)" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["fusion", "onnx", "video"]
    assert "neopain-tiny-" in text and setup["card"]["model_version"] in text  # each model named, with its card


def test_ceiling_matches_truth_and_ratings(setup: dict) -> None:
    """Computed here from truth.csv and ratings.csv (pingouin's ICC(A,1)); shown with each model's gap."""
    table = _truth_and_raters(setup["data"])
    metrics = json.loads((setup["out"] / "metrics.json").read_text())
    ceiling = metrics["ceiling"]
    assert ceiling["available"] and ceiling["n_windows"] == len(table) == 6 * INFANTS
    assert ceiling["mae"] == pytest.approx(np.mean(np.abs(table["truth"] - table["mean_rater"])), abs=1e-9)
    assert ceiling["icc_a1"]["value"] == pytest.approx(_icc_a1(table["truth"].values, table["mean_rater"].values), abs=1e-6)
    text = (setup["out"] / "report.md").read_text()
    assert f"MAE {ceiling['mae']:.3f}" in text and "| *ceiling* |" in text
    for label, m in metrics["models"].items():
        assert m["gap_to_ceiling"]["mae"] == pytest.approx(m["mae"] - ceiling["mae"])
        assert m["gap_to_ceiling"]["icc_a1"] == pytest.approx(ceiling["icc_a1"]["value"] - m["icc_a1"]["value"])


def test_predictions_yardstick_groups_and_paired_tests(setup: dict) -> None:
    out = setup["out"]
    pred = pd.read_csv(out / "predictions.csv").set_index("window_id")
    table = _truth_and_raters(setup["data"])
    assert sorted(pred.index) == sorted(table.index)
    ref = table.loc[pred.index, "mean_rater"].values
    assert np.allclose(pred["nips_mean_rater"], ref, atol=1e-4)
    # The export on the device's engines scores what the checkpoint it came from scores.
    assert np.abs(pred["pred_onnx"] - pred["pred_fusion"]).max() <= 1e-3
    assert np.abs(pred["pred_video"] - pred["pred_fusion"]).max() > 1e-2  # another model, not a copy
    metrics = json.loads((out / "metrics.json").read_text())
    for label in ("fusion", "onnx", "video"):
        assert metrics["models"][label]["mae"] == pytest.approx(np.mean(np.abs(pred[f"pred_{label}"] - ref)), abs=1e-4)
    # Yardstick: the training median the final model's card carries, which is its training windows' median.
    median = float(np.median(_truth_and_raters(setup["training_data"])["mean_rater"]))
    assert setup["card"]["data"]["nips_median"] == pytest.approx(median)
    assert metrics["constant_median"]["mae"] == pytest.approx(np.mean(np.abs(median - ref)), abs=1e-9)
    assert f"training median {median:.2f} (from fusion's model card)" in (out / "report.md").read_text()
    # Per-infant paired Wilcoxon between the models, as scipy gives it on per-infant MAEs.
    per_infant = {k: (pred[f"pred_{k}"] - ref).abs().groupby(pred["subject_id"]).mean() for k in ("fusion", "video")}
    expected = sps.wilcoxon(per_infant["fusion"].values, per_infant["video"].values).pvalue
    assert metrics["wilcoxon_pairwise"]["fusion"]["video"] == pytest.approx(expected)
    # Availability: intubation from subjects.csv.
    subjects = pd.read_csv(setup["data"] / "subjects.csv").set_index("subject_id")
    intubated = subjects.loc[pred["subject_id"], "intubated"].values == 1
    assert 0 < intubated.sum() < len(pred), "the cohort should mix intubated and breathing infants"
    group = metrics["by_availability"]["fusion"]["intubated"]
    assert group["n_windows"] == intubated.sum()
    assert group["mae"] == pytest.approx(np.mean(np.abs(pred["pred_fusion"].values[intubated] - ref[intubated])), abs=1e-4)
    # Every confounder_* column of truth.csv, the generator's and the one this test added.
    confounders = [c for c in table.columns if c.startswith("confounder_")]
    assert EXTRA_CONFOUNDER in confounders
    for column in confounders:
        flag = table.loc[pred.index, column].values == 1
        entry = metrics["by_confounder"]["fusion"][column[len("confounder_"):]]
        assert entry["present"]["n_windows"] == flag.sum() and entry["absent"]["n_windows"] == (~flag).sum()
        if flag.any():
            assert entry["present"]["mae"] == pytest.approx(np.mean(np.abs(pred["pred_fusion"].values[flag] - ref[flag])),
                                                            abs=1e-4)


def test_export_carries_the_card(setup: dict) -> None:
    manifest = json.loads((setup["export"] / "manifest.json").read_text())
    assert manifest["model_card"] == setup["card"]
    assert (setup["export"] / "model_card.md").read_text() == (setup["final"] / "model_card.md").read_text()


def test_a_card_of_another_model_is_refused(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    final = Path(shutil.copytree(setup["final"], tmp_path / "final"))
    card = json.loads((final / "model_card.json").read_text())
    (final / "model_card.json").write_text(json.dumps({**card, "checkpoint_sha256": "0" * 64}))
    assert main(["export", "--checkpoint", str(final / "fusion.pt"), "--out", str(tmp_path / "x"), "--quiet"]) == 1
    assert "checkpoint_sha256 000000000000... but" in capsys.readouterr().err
    del card["checkpoint_sha256"]
    (final / "model_card.json").write_text(json.dumps({**card, "model_version": "neopain-tiny-000000000000"}))
    assert main(["export", "--checkpoint", str(final / "fusion.pt"), "--out", str(tmp_path / "x"), "--quiet"]) == 1
    assert "'neopain-tiny-000000000000' but the checkpoint's weights are" in capsys.readouterr().err


def test_cv_run_report_and_real_dataset_without_truth(setup: dict, tmp_path: Path) -> None:
    """``--run``: the ceiling from the run's dataset; a dataset without truth.csv says there is no ceiling."""
    table = _truth_and_raters(setup["data"])
    rng = np.random.default_rng(0)
    subjects = sorted(table["subject"].unique())
    run = tmp_path / "run"
    run.mkdir()
    real = tmp_path / "real"
    shutil.copytree(setup["data"], real)
    for truth in real.glob("*/*/truth.csv"):
        truth.unlink()
    texts = {}
    for name, data in (("synthetic", setup["data"]), ("real", real)):
        (run / "run.json").write_text(json.dumps({"data": str(data)}))
        with (run / "predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["window_id", "subject_id", "fold", "gestational_age_weeks", "skin_tone_group",
                             "nips_mean_rater", "rater_1", "rater_2", "pred_fusion", "pred_video"])
            for window_id, row in table.iterrows():
                fold = subjects.index(row["subject"]) % 2
                writer.writerow([window_id, row["subject"], fold, 36.0, "I-II", row["mean_rater"], row["mean_rater"],
                                 row["mean_rater"] + rng.integers(-1, 2), rng.uniform(0, 7), rng.uniform(0, 7)])
        assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / name)]) == 0
        texts[name] = (tmp_path / name / "report.md").read_text()
    metrics = json.loads((tmp_path / "synthetic" / "metrics.json").read_text())
    assert metrics["ceiling"]["mae"] == pytest.approx(np.mean(np.abs(table["truth"] - table["mean_rater"])), abs=1e-9)
    assert "**Ceiling**" in texts["synthetic"]
    assert "No ceiling: dataset has no truth.csv" in texts["real"]
    # CV yardstick: each fold's constant is the median of the other folds' mean-rater NIPS.
    folds = np.array([subjects.index(s) % 2 for s in table["subject"]])
    constant = np.array([np.median(table["mean_rater"].values[folds != f]) for f in folds])
    assert metrics["constant_median"]["mae"] == pytest.approx(np.mean(np.abs(constant - table["mean_rater"].values)))


@pytest.mark.parametrize("argv, message", [
    (["--model", "{tmp}/nothing.pt", "--data", "{data}"], "is neither a checkpoint file nor a folder"),
    (["--model", "{tmp}/junk.pt", "--data", "{data}"], "not a checkpoint torch.load can read"),
    (["--model", "{tmp}"], "--model needs --data"),
    (["--model", "{tmp}/empty", "--data", "{data}"], "holds neither manifest.json"),
])
def test_bad_input_is_exit_2_naming_it(setup: dict, tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                       message: str) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, data=setup["data"]) for a in argv]
    assert main(["evaluate", *args, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err


def test_shift_table_of_two_reports(setup: dict, capsys: pytest.CaptureFixture) -> None:
    """``python -m models.evaluation.shift``: a report against itself has ratio 1 and a CI around it."""
    from models.evaluation.shift import main as shift_main

    assert shift_main(["--reference", str(setup["out"]), "--shifted", str(setup["out"])]) == 0
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()[2:]}
    metrics = json.loads((setup["out"] / "metrics.json").read_text())
    assert set(rows) == {"fusion", "onnx", "video", "*constant median*", "*ceiling*"}
    for label in ("fusion", "onnx", "video"):
        cells = [c.strip() for c in rows[label].split("|")[1:-1]]
        assert cells[1].startswith(f"{metrics['models'][label]['mae']:.3f} ") and cells[1] == cells[3]
        ratio, low, high = (float(x) for x in cells[5].replace("[", "").replace("]", "").replace(",", "").split())
        assert ratio == 1.0 and low < 1.0 < high
