"""Two evaluations of the same models side by side: a reference cohort and a shifted one, and the ratio.

``python -m models.evaluation.shift --reference REPORT_A --shifted REPORT_B`` reads the two reports'
metrics.json (``neopain evaluate --model ... --data ...``) and prints a Markdown table per model: MAE and
ICC(A,1) on each cohort with their 95 % CIs, and the MAE ratio shifted / reference with a 95 % CI from
resampling the infants of both cohorts independently (the two cohorts share no infant); the ceiling and the
constant-median yardstick are rows of the same table. Why a ratio: the absolute MAE of a shifted cohort mixes
what the model fails at with how hard the cohort is; the ceiling and the constant rows say the latter.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from models.evaluation.metrics import CONSTANT

N_BOOT = 2000


def _ratio_ci(a: dict, b: dict, windows_a: dict, windows_b: dict, seed: int = 0) -> tuple[float, float]:
    """95 % CI of MAE(b) / MAE(a), infants resampled with replacement within each cohort."""
    rng = np.random.default_rng(seed)

    def boot(errors: dict, windows: dict) -> np.ndarray:
        ids = sorted(errors)
        n = np.array([windows[i] for i in ids], dtype=float)
        total = np.array([errors[i] for i in ids]) * n
        pick = rng.integers(0, len(ids), size=(N_BOOT, len(ids)))
        return total[pick].sum(axis=1) / n[pick].sum(axis=1)

    ratios = boot(b, windows_b) / boot(a, windows_a)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(low), float(high)


def _cells(m: dict) -> str:
    icc = m["icc_a1"]
    return (f"{m['mae']:.3f} [{m['mae_ci'][0]:.2f}, {m['mae_ci'][1]:.2f}] | "
            f"{icc['value']:.2f} [{icc['ci_low']:.2f}, {icc['ci_high']:.2f}]")


def shift_table(reference: dict, shifted: dict) -> str:
    """The Markdown table of two metrics dicts (models in both, then the constant and the ceiling)."""
    lines = ["| model | MAE reference [95% CI] | ICC(A,1) reference | MAE shifted [95% CI] | ICC(A,1) shifted | "
             "MAE ratio shifted / reference [95% CI] |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    labels = [k for k in reference["models"] if k in shifted["models"]]
    for label in [*labels, CONSTANT]:
        a = reference["models"][label] if label != CONSTANT else reference["constant_median"]
        b = shifted["models"][label] if label != CONSTANT else shifted["constant_median"]
        low, high = _ratio_ci(reference["per_infant_mae"][label], shifted["per_infant_mae"][label],
                              reference["per_infant_windows"], shifted["per_infant_windows"])
        name = label if label != CONSTANT else f"*{CONSTANT}*"
        lines.append(f"| {name} | {_cells(a)} | {_cells(b)} | {b['mae'] / a['mae']:.2f} [{low:.2f}, {high:.2f}] |")
    ca, cb = reference["ceiling"], shifted["ceiling"]
    if ca["available"] and cb["available"]:
        lines.append(f"| *ceiling* | {ca['mae']:.3f} | {ca['icc_a1']['value']:.2f} [{ca['icc_a1']['ci_low']:.2f}, "
                     f"{ca['icc_a1']['ci_high']:.2f}] | {cb['mae']:.3f} | {cb['icc_a1']['value']:.2f} "
                     f"[{cb['icc_a1']['ci_low']:.2f}, {cb['icc_a1']['ci_high']:.2f}] | {cb['mae'] / ca['mae']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.evaluation.shift", description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, type=Path, help="report folder of the reference cohort")
    parser.add_argument("--shifted", required=True, type=Path, help="report folder of the shifted cohort")
    args = parser.parse_args(argv)
    reference, shifted = (json.loads((d / "metrics.json").read_text()) for d in (args.reference, args.shifted))
    print(shift_table(reference, shifted), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
