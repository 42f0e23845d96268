"""report.md: the metrics of models/evaluation/metrics.py as tables a clinical reader checks, with the plots."""

from __future__ import annotations

import numpy as np

from models.evaluation.metrics import CONSTANT


def _ci(entry: dict) -> str:
    return f"{entry['value']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def _mae_ci(m: dict) -> str:
    return f"{m['mae']:.3f} [{m['mae_ci'][0]:.2f}, {m['mae_ci'][1]:.2f}]"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "—" if value is None or not np.isfinite(value) else format(value, fmt)


def markdown(metrics: dict, labels: list[str], plots: dict[str, str], source: str, models: list[str] | None = None) -> str:
    """The whole report; ``source`` says what was evaluated on what, ``models`` describes each model (optional)."""
    ir, ceiling, const = metrics["inter_rater"], metrics["ceiling"], metrics["constant_median"]
    lines = ["# neopain evaluation report", "", source, ""]
    if models:
        lines += ["Models:", ""] + [f"- {m}" for m in models] + [""]
    lines += [
        f"Reference = mean of {ir['n_raters']} raters. Inter-rater agreement: ICC(A,1) {_ci(ir['icc_a1'])}, "
        f"ICC(C,1) {_ci(ir['icc_c1'])}.",
        "",
    ]
    if ceiling["available"]:
        lines.append(
            f"**Ceiling** (the synthetic truth total vs the mean rater, {ceiling['n_windows']} windows of "
            f"{ceiling['n_infants']} infants): MAE {ceiling['mae']:.3f}, ICC(A,1) {_ci(ceiling['icc_a1'])}: the "
            "agreement a model that recovered the hidden NIPS exactly would reach.")
    else:
        lines.append(f"**{ceiling['reason'][0].upper()}{ceiling['reason'][1:]}.**")
    lines += [f"**Yardstick**: a constant prediction, the {const['note']}.", ""]
    wil = metrics["wilcoxon_vs_fusion"]
    header = ("| model | windows | infants | MAE [95% CI over infants] | RMSE | Pearson r | ICC(A,1) [95% CI] | "
              "ICC(C,1) [95% CI] | MAE − ceiling | ceiling − ICC(A,1) | p vs constant | p vs fusion |")
    lines += [header, "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for label in labels:
        m = metrics["models"][label]
        gap = m.get("gap_to_ceiling")
        lines.append(
            f"| {label} | {m['n_windows']} | {m['n_infants']} | {_mae_ci(m)} | {m['rmse']:.3f} | {m['pearson_r']:.3f} |"
            f" {_ci(m['icc_a1'])} | {_ci(m['icc_c1'])} | {_num(gap and gap['mae'], '+.3f')} |"
            f" {_num(gap and gap['icc_a1'], '+.3f')} | {_p(metrics['wilcoxon_vs_constant'].get(label))} |"
            f" {_p(wil.get(label))} |")
    if ceiling["available"]:
        lines.append(f"| *ceiling* | {ceiling['n_windows']} | {ceiling['n_infants']} | {ceiling['mae']:.3f} |"
                     f" {ceiling['rmse']:.3f} | {ceiling['pearson_r']:.3f} | {_ci(ceiling['icc_a1'])} |"
                     f" {_ci(ceiling['icc_c1'])} | 0 | 0 | | |")
    lines.append(f"| *{CONSTANT}* | {const['n_windows']} | {const['n_infants']} | {_mae_ci(const)} | {const['rmse']:.3f} |"
                 f" {_num(const['pearson_r'])} | {_ci(const['icc_a1'])} | {_ci(const['icc_c1'])} | | | | |")
    lines += ["", "p: two-sided Wilcoxon signed-rank test on per-infant mean absolute errors (paired by infant).", ""]
    pairs = metrics["wilcoxon_pairwise"]
    if len(labels) > 2:
        lines += ["## Per-infant paired Wilcoxon p between models", "",
                  "| | " + " | ".join(labels[1:]) + " |", "| --- |" + " ---: |" * (len(labels) - 1)]
        for a in labels[:-1]:
            cells = [_p(pairs.get(a, {}).get(b)) if labels.index(b) > labels.index(a) else "" for b in labels[1:]]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    rows = [*labels, CONSTANT]
    for title, key in (("gestational age", "by_gestational_age"), ("skin tone group", "by_skin_tone")):
        groups = sorted({g for k in rows for g in metrics[key][k]})
        if groups:
            lines += [f"## MAE by {title}", "", "| model | " + " | ".join(groups) + " |", "| --- |" + " ---: |" * len(groups)]
            lines += [f"| {k} | " + " | ".join(_num(metrics[key][k].get(g)) for g in groups) + " |" for k in rows]
            lines.append("")
    lines += _availability(metrics, rows) + _confounders(metrics, rows)
    lines += ["## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()] + [""]
    return "\n".join(lines)


def _availability(metrics: dict, rows: list[str]) -> list[str]:
    by = metrics["by_availability"]
    if not by.get(rows[0]):
        return []
    rows = rows + (["ceiling"] if by.get("ceiling") else [])
    groups = list(by[rows[0]])
    counts = [f"{g} ({by[rows[0]][g]['n_windows']} w, {by[rows[0]][g]['n_infants']} inf.)" for g in groups]
    lines = ["## MAE by modality availability", "",
             "Windows as the dataset loader sees them (face visible in most frames, cry detected by the device's "
             "detector, at least half the vitals present) and intubation from subjects.csv; a window may be in "
             "several groups.", "", "| model | " + " | ".join(counts) + " |", "| --- |" + " ---: |" * len(groups)]
    lines += [f"| {r} | " + " | ".join(_num(by[r][g]["mae"]) for g in groups) + " |" for r in rows]
    return lines + [""]


def _confounders(metrics: dict, rows: list[str]) -> list[str]:
    by = metrics["by_confounder"]
    if not by.get(rows[0]):
        return []
    rows = rows + (["ceiling"] if by.get("ceiling") else [])
    names = list(by[rows[0]])
    lines = ["## MAE with and without each confounder (truth.csv)", "",
             "| model | " + " | ".join(f"{c} present ({by[rows[0]][c]['present']['n_windows']} w) | absent"
                                      for c in names) + " |", "| --- |" + " ---: | ---: |" * len(names)]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(f"{_num(by[r][c]['present']['mae'])} | {_num(by[r][c]['absent']['mae'])}"
                                              for c in names) + " |")
    return lines + [""]
