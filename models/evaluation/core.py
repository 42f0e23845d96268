"""The two ways to get an evaluation report: a training run's out-of-fold predictions, or trained models
scored on a dataset (external validation). Both end in :func:`report_table`, so the reports read alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from models.evaluation.metrics import PRED_PREFIX, compute, model_labels
from models.evaluation.plots import write_plots
from models.evaluation.predictors import Predictor, load_models, unique_labels
from models.evaluation.report import markdown
from models.evaluation.table import dataset_table, read_predictions, write_predictions
from models.evaluation.truth import join_truth, read_truth

PREDICTIONS = "predictions.csv"


def report_table(cols: dict[str, np.ndarray], out_dir: str | Path, source: str, *, models: list[str] | None = None,
                 training_median: float | None = None, median_source: str | None = None,
                 no_ceiling: str | None = None) -> dict[str, object]:
    """Metrics, plots and report.md of one evaluation table into ``out_dir``; returns the metrics.

    ``no_ceiling`` replaces the reason given when the table has no truth (e.g. the run's dataset is gone).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = model_labels(cols)
    if not labels:
        raise ValueError("the evaluation table has no pred_<model> column")
    metrics = compute(cols, training_median=training_median, median_source=median_source)
    if no_ceiling and not metrics["ceiling"]["available"]:
        metrics["ceiling"]["reason"] = no_ceiling
    metrics["source"] = source
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots = write_plots(out, cols, labels, metrics)
    (out / "report.md").write_text(markdown(metrics, labels, plots, source, models))
    return metrics


def _run_dataset(run: Path) -> tuple[Path | None, str]:
    """The dataset a run was trained on (run.json's ``data``), if it is still there, and a note if not."""
    try:
        data = json.loads((run / "run.json").read_text())["data"]
    except (OSError, ValueError, KeyError):
        return None, f"no ceiling: {run / 'run.json'} does not name the run's dataset"
    for candidate in (Path(data), run / data):
        if candidate.is_dir():
            return candidate, ""
    return None, f"no ceiling: the run's dataset {data} is not on this machine"


def evaluate_run(run_dir: str | Path, out_dir: str | Path) -> dict[str, object]:
    """``neopain evaluate --run RUN``: the report of a cross-validation run's out-of-fold predictions."""
    run = Path(run_dir)
    cols = read_predictions(run / PREDICTIONS)
    data, why = _run_dataset(run)
    if data is not None:
        cols = join_truth(cols, read_truth(data))
    source = f"Out-of-fold predictions from `{run / PREDICTIONS}`" + (f" on `{data}`." if data else ".")
    return report_table(cols, out_dir, source, no_ceiling=why or None)


def score_dataset(models: Sequence[Predictor], data: str | Path, cache_dir: str | Path | None = None,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """Load the dataset's windows once, pre-process them once per network size, and add each model's column."""
    from models.data.loader import load_windows
    from models.samples import samples_from_windows

    windows = load_windows(data, progress=progress, cache_dir=Path(cache_dir) / "windows" if cache_dir else None)
    if not windows:
        raise ValueError(f"{data}: no rated windows")
    cols = dataset_table(windows)
    samples = {}
    for m in models:
        key = json.dumps(m.config.to_dict(), sort_keys=True)
        if key not in samples:
            samples[key] = samples_from_windows(windows, m.config, progress=progress)
        cols[PRED_PREFIX + m.label] = m.predict(samples[key])
    return join_truth(cols, read_truth(data))


def evaluate_models(specs: Sequence[str], data: str | Path, out_dir: str | Path, *, cache_dir: str | Path | None = None,
                    progress: bool = True) -> dict[str, object]:
    """``neopain evaluate --model ... --data DATASET``: every model on the dataset, one report."""
    models = [m for spec in specs for m in load_models(spec)]
    unique_labels(models)
    cols = score_dataset(models, data, cache_dir, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / PREDICTIONS, cols)
    carrier = next((m for m in models if m.training_median is not None), None)
    return report_table(
        cols, out, f"External validation on `{data}`: {len(models)} model(s), window predictions in `{PREDICTIONS}`.",
        models=[m.describe() for m in models],
        training_median=carrier.training_median if carrier else None,
        median_source=f"from {carrier.label}'s model card" if carrier else None,
    )
