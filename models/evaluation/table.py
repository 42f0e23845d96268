"""The evaluation table: one row per rated window, its labels and metadata, and one ``pred_<model>`` column each.

Two sources give the same columns, so one report serves both: a training run's out-of-fold predictions.csv
(:func:`read_predictions`), and a dataset scored by trained models (:func:`dataset_table`, which adds what
the loader knows per window: face visible, audio, cry detected, vitals valid, and the infant's intubation).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from models.evaluation.metrics import PRED_PREFIX
from models.evaluation.truth import CONFOUNDER_PREFIX, TRUTH_TOTAL

if TYPE_CHECKING:
    from models.data.loader import Window

FLOAT_PREFIXES = (PRED_PREFIX, "rater_", "avail_", CONFOUNDER_PREFIX)
FLOAT_COLUMNS = ("nips_mean_rater", "gestational_age_weeks", "intubated", TRUTH_TOTAL)


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """A predictions.csv (``neopain train`` or ``neopain evaluate --model``) as columns."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no predictions")
    columns = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    for key in list(columns):
        if key.startswith(FLOAT_PREFIXES) or key in FLOAT_COLUMNS:
            try:
                columns[key] = np.array([float(v) if v != "" else np.nan for v in columns[key]])
            except ValueError:
                raise ValueError(f"{path}: column {key!r} holds a value that is not a number") from None
    return columns


def write_predictions(path: str | Path, cols: dict[str, np.ndarray]) -> Path:
    """The table as CSV (numbers with 4 decimals, NaN as an empty cell)."""
    path = Path(path)
    names = list(cols)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for i in range(len(cols["window_id"])):
            writer.writerow([_cell(cols[n][i]) for n in names])
    return path


def _cell(value: object) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.4f}"
    return str(value)


def dataset_table(windows: Sequence[Window], rater_ids: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Labels, metadata and availability of loaded windows (``models.data.loader.Window``), in their order.

    Window ids are ``<subject>/<recording>/<index>`` like ``SampleSet.window_ids``.
    """
    raters = list(rater_ids) if rater_ids is not None else sorted({r for w in windows for r in w.label.rater_totals})
    cols: dict[str, np.ndarray] = {
        "window_id": np.array([f"{w.subject.subject_id}/{w.recording_id}/{w.index}" for w in windows]),
        "subject_id": np.array([w.subject.subject_id for w in windows]),
        "gestational_age_weeks": np.array([w.subject.gestational_age_weeks for w in windows], dtype=float),
        "skin_tone_group": np.array([w.subject.skin_tone_group or "" for w in windows]),
        "nips_mean_rater": np.array([w.label.total for w in windows], dtype=float),
    }
    for i, rater in enumerate(raters):
        cols[f"rater_{i + 1}"] = np.array([w.label.rater_totals.get(rater, np.nan) for w in windows], dtype=float)
    cols["intubated"] = np.array([float(w.subject.intubated) for w in windows])
    for flag in ("face_visible", "audio", "cry_detected", "vitals_valid"):
        cols[f"avail_{flag}"] = np.array([float(getattr(w.presence, flag)) for w in windows])
    return cols
