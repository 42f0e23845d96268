"""Clinical evaluation report from out-of-fold predictions: the paper's table, with plots.

Per model: MAE, RMSE, Pearson r, ICC(A,1) and ICC(C,1) with 95 % CI against the mean rater; the
inter-rater ICC of the raters themselves (the ceiling a model can be judged against); repeated-measures
Bland-Altman and predicted-vs-rated scatter plots; MAE per gestational-age group and per skin-tone group;
and the Wilcoxon signed-rank p of the fusion model against each baseline on per-infant mean absolute
errors. Everything goes to one folder: report.md, metrics.json and PNG plots.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the device and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models import stats  # noqa: E402

PRETERM_WEEKS = 37.0
GA_GROUPS = (("extremely/very preterm (<32 w)", 0.0, 32.0), ("moderate/late preterm (32-37 w)", 32.0, 37.0), ("term (>=37 w)", 37.0, 99.0))


def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no predictions")
    columns = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    for key in list(columns):
        if key.startswith(("pred_", "rater_")) or key in ("nips_mean_rater", "gestational_age_weeks"):
            columns[key] = columns[key].astype(float)
    return columns


def model_metrics(pred: np.ndarray, ref: np.ndarray, subjects: np.ndarray) -> dict[str, object]:
    pair = np.stack([pred, ref], axis=1)
    return {
        "n_windows": int(len(pred)),
        "n_infants": int(len(np.unique(subjects))),
        "mae": stats.mae(pred, ref),
        "rmse": stats.rmse(pred, ref),
        "pearson_r": stats.pearson_r(pred, ref),
        "icc_a1": asdict(stats.icc_absolute(pair)),
        "icc_c1": asdict(stats.icc_consistency(pair)),
        "bland_altman": asdict(stats.bland_altman(pred, ref, subjects)),
    }


def group_mae(pred: np.ndarray, ref: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    return {str(g): stats.mae(pred[groups == g], ref[groups == g]) for g in np.unique(groups) if str(g)}


def ga_groups(ga_weeks: np.ndarray) -> np.ndarray:
    labels = np.empty(len(ga_weeks), dtype=object)
    for name, lo, hi in GA_GROUPS:
        labels[(ga_weeks >= lo) & (ga_weeks < hi)] = name
    return labels.astype(str)


def evaluate(predictions_csv: str | Path, out_dir: str | Path) -> dict[str, object]:
    """Compute every figure of the report and write it to ``out_dir``; returns the metrics dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = read_predictions(predictions_csv)
    ref, subjects = cols["nips_mean_rater"], cols["subject_id"]
    kinds = [k[len("pred_") :] for k in cols if k.startswith("pred_")]
    raters = np.stack([cols[k] for k in cols if k.startswith("rater_")], axis=1)
    complete = np.isfinite(raters).all(axis=1)
    metrics: dict[str, object] = {
        "inter_rater": {
            "icc_a1": asdict(stats.icc_absolute(raters[complete])),
            "icc_c1": asdict(stats.icc_consistency(raters[complete])),
            "n_raters": int(raters.shape[1]),
        },
        "models": {},
        "by_gestational_age": {},
        "by_skin_tone": {},
        "wilcoxon_vs_fusion": {},
    }
    ga = ga_groups(cols["gestational_age_weeks"])
    per_infant = {}
    for kind in kinds:
        pred = cols[f"pred_{kind}"]
        metrics["models"][kind] = model_metrics(pred, ref, subjects)
        metrics["by_gestational_age"][kind] = group_mae(pred, ref, ga)
        metrics["by_skin_tone"][kind] = group_mae(pred, ref, cols["skin_tone_group"])
        per_infant[kind] = stats.per_subject_mae(pred, ref, subjects)
    if "fusion" in kinds:
        for kind in kinds:
            if kind != "fusion":
                metrics["wilcoxon_vs_fusion"][kind] = stats.wilcoxon_paired(per_infant["fusion"], per_infant[kind])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots = _plots(out, cols, kinds, ref, subjects, ga)
    (out / "report.md").write_text(_markdown(metrics, kinds, plots, predictions_csv))
    return metrics


def _plots(out: Path, cols: dict[str, np.ndarray], kinds: list[str], ref: np.ndarray, subjects: np.ndarray, ga: np.ndarray) -> dict[str, str]:
    files = {}
    n = len(kinds)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        pred = cols[f"pred_{kind}"]
        ax.scatter(ref, pred, s=8, alpha=0.5)
        ax.plot([0, 7], [0, 7], "k--", lw=1)
        ax.set(xlim=(-0.2, 7.2), ylim=(-0.2, 7.2), xlabel="rated NIPS (mean of raters)", title=kind)
    axes[0][0].set_ylabel("predicted NIPS")
    fig.tight_layout()
    fig.savefig(out / "scatter.png", dpi=110)
    plt.close(fig)
    files["scatter"] = "scatter.png"

    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        pred = cols[f"pred_{kind}"]
        ba = stats.bland_altman(pred, ref, subjects)
        ax.scatter((pred + ref) / 2, pred - ref, s=8, alpha=0.5)
        for y, style in ((ba.bias, "-"), (ba.loa_low, "--"), (ba.loa_high, "--")):
            ax.axhline(y, color="k", ls=style, lw=1)
        ax.set(xlabel="mean of predicted and rated", title=f"{kind}: bias {ba.bias:+.2f}, LoA ±{1.96 * ba.sd:.2f}")
    axes[0][0].set_ylabel("predicted − rated NIPS")
    fig.tight_layout()
    fig.savefig(out / "bland_altman.png", dpi=110)
    plt.close(fig)
    files["bland_altman"] = "bland_altman.png"

    for name, groups in (("gestational_age", ga), ("skin_tone", cols["skin_tone_group"])):
        labels = [g for g in np.unique(groups) if g]
        if not labels:
            continue
        fig, ax = plt.subplots(figsize=(1.2 + 1.4 * len(labels) * max(1, n) / 3, 3.4))
        width = 0.8 / n
        for i, kind in enumerate(kinds):
            pred = cols[f"pred_{kind}"]
            values = [stats.mae(pred[groups == g], ref[groups == g]) for g in labels]
            ax.bar(np.arange(len(labels)) + i * width, values, width, label=kind)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, fontsize=8)
        ax.set(ylabel="MAE (NIPS points)", title=f"MAE by {name.replace('_', ' ')}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"mae_by_{name}.png", dpi=110)
        plt.close(fig)
        files[f"mae_by_{name}"] = f"mae_by_{name}.png"
    return files


def _ci(entry: dict) -> str:
    return f"{entry['value']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}]"


def _markdown(metrics: dict, kinds: list[str], plots: dict[str, str], source: str | Path) -> str:
    ir = metrics["inter_rater"]
    lines = [
        "# neopain evaluation report",
        "",
        f"Out-of-fold predictions from `{source}`; reference = mean of {ir['n_raters']} raters.",
        f"Inter-rater agreement: ICC(A,1) {_ci(ir['icc_a1'])}, ICC(C,1) {_ci(ir['icc_c1'])}.",
        "",
        "| model | windows | infants | MAE | RMSE | Pearson r | ICC(A,1) [95% CI] | ICC(C,1) [95% CI] | Wilcoxon p vs fusion |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for kind in kinds:
        m = metrics["models"][kind]
        p = metrics["wilcoxon_vs_fusion"].get(kind)
        lines.append(
            f"| {kind} | {m['n_windows']} | {m['n_infants']} | {m['mae']:.3f} | {m['rmse']:.3f} | {m['pearson_r']:.3f} |"
            f" {_ci(m['icc_a1'])} | {_ci(m['icc_c1'])} | {'—' if p is None else f'{p:.3g}'} |"
        )
    lines += ["", "Wilcoxon signed-rank tests pair the models by infant (per-infant mean absolute error).", ""]
    for title, key in (("gestational age", "by_gestational_age"), ("skin tone group", "by_skin_tone")):
        groups = sorted({g for k in kinds for g in metrics[key][k]})
        if not groups:
            continue
        lines += [f"## MAE by {title}", "", "| model | " + " | ".join(groups) + " |", "| --- |" + " ---: |" * len(groups)]
        for kind in kinds:
            lines.append(f"| {kind} | " + " | ".join(f"{metrics[key][kind].get(g, float('nan')):.3f}" for g in groups) + " |")
        lines.append("")
    lines += ["## Plots", ""] + [f"![{name}]({file})" for name, file in plots.items()] + [""]
    return "\n".join(lines)


def add_evaluate_arguments(parser: "argparse.ArgumentParser") -> None:  # noqa: F821
    """Arguments of ``neopain evaluate``."""
    parser.add_argument("--run", required=True, help="run folder written by `neopain train`")
    parser.add_argument("--out", help="report folder (default: RUN/report)")


def run_evaluate(args: "argparse.Namespace") -> int:  # noqa: F821
    """``neopain evaluate``: returns the exit code."""
    run = Path(args.run)
    out = Path(args.out) if args.out else run / "report"
    evaluate(run / "predictions.csv", out)
    print(f"report: {out / 'report.md'}")
    return 0
