"""The synthetic cohort's hidden truth per rated window, and the ceiling it sets.

Why a ceiling: on a synthetic cohort (``neopain synth``) every rater scores the same hidden NIPS items
(``truth.csv``: ``total``) through their own bias and perception noise (models/data/synth_ratings.py). A
model that recovered the hidden total exactly would still disagree with the mean rater by the raters' own
noise, so "the truth total vs the mean rater" (MAE, ICC(A,1)) is the agreement a perfect observer reaches:
the level a model's numbers are judged against. It is not a strict bound: the mean rater's expected score
given the infant's behaviour is smooth around the item thresholds where the truth steps, so a model can come
within noise of it, or just past it. Real datasets have no ``truth.csv`` and no ceiling.

Windows are matched by id ``<subject>/<recording>/<index>``, the index counting the recording's rated
windows in time order (``models.data.layout.read_ratings``, as the loader and ``SampleSet.window_ids`` do),
and within a recording by ``window_start_s``.
"""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import numpy as np

from models import stats
from models.data.layout import RATINGS_FILE, read_ratings
from models.data.synth import TRUTH_FILE
from models.data.synth_confounders import CONFOUNDER_PREFIX
TRUTH_TOTAL = "truth_total"  # the evaluation table's column of the hidden NIPS total
NO_TRUTH = "no ceiling: dataset has no truth.csv"
_START_TOLERANCE_S = 1e-3


def read_truth(root: str | Path) -> dict[str, dict[str, float]]:
    """``{window_id: {"truth_total": ..., "confounder_x": 0/1, ...}}`` for every recording with a truth.csv.

    Empty for a real dataset. A truth.csv row without a rated window (or the reverse) is left out; a
    truth.csv without a ``total`` column is an error naming the file.
    """
    root = Path(root)
    out: dict[str, dict[str, float]] = {}
    for path in sorted(root.glob(f"*/*/{TRUTH_FILE}")):
        rec_dir = path.parent
        if rec_dir.name.startswith(".") or rec_dir.parent.name.startswith("."):
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "total" not in fields or "window_start_s" not in fields:
                raise ValueError(f"{path}: needs columns window_start_s and total; header is {fields}")
            keep = ["total"] + [f for f in fields if f.startswith(CONFOUNDER_PREFIX)]
            rows = []
            for row in reader:
                try:
                    rows.append((float(row["window_start_s"]), {k: float(row[k]) for k in keep}))
                except ValueError:
                    raise ValueError(f"{path}:{reader.line_num}: not a number in {[row[k] for k in keep]}") from None
        starts = np.array([s for s, _ in rows])
        for index, window in enumerate(read_ratings(rec_dir / RATINGS_FILE)):
            if not len(starts):
                break
            nearest = int(np.argmin(np.abs(starts - window.start_s)))
            if abs(starts[nearest] - window.start_s) > _START_TOLERANCE_S:
                continue
            values = dict(rows[nearest][1])
            values[TRUTH_TOTAL] = values.pop("total")
            out[f"{rec_dir.parent.name}/{rec_dir.name}/{index}"] = values
    return out


def join_truth(cols: dict[str, np.ndarray], truth: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """Add ``truth_total`` and every ``confounder_*`` column to an evaluation table (NaN where unknown)."""
    if not truth:
        return cols
    names = sorted({k for values in truth.values() for k in values})
    out = dict(cols)
    for name in names:
        out[name] = np.array([truth.get(str(w), {}).get(name, np.nan) for w in cols["window_id"]], dtype=float)
    return out


def ceiling(cols: dict[str, np.ndarray]) -> dict[str, object]:
    """Agreement of the hidden truth total with the mean rater on the table's windows, or why there is none."""
    if TRUTH_TOTAL not in cols:
        return {"available": False, "reason": NO_TRUTH}
    truth, ref, subjects = cols[TRUTH_TOTAL], cols["nips_mean_rater"], cols["subject_id"]
    known = np.isfinite(truth)
    if known.sum() < 2:
        return {"available": False, "reason": f"no ceiling: truth.csv matches {int(known.sum())} of {len(truth)} windows"}
    pair = np.stack([truth[known], ref[known]], axis=1)
    return {
        "available": True,
        "n_windows": int(known.sum()),
        "n_infants": int(len(np.unique(subjects[known]))),
        "mae": stats.mae(truth[known], ref[known]),
        "rmse": stats.rmse(truth[known], ref[known]),
        "pearson_r": stats.pearson_r(truth[known], ref[known]),
        "icc_a1": asdict(stats.icc_absolute(pair)),
        "icc_c1": asdict(stats.icc_consistency(pair)),
    }


def confounder_columns(cols: dict[str, np.ndarray]) -> list[str]:
    return sorted(k for k in cols if k.startswith(CONFOUNDER_PREFIX))
