"""The report's PNG plots: scatter, Bland-Altman, MAE by group, and every model against the ceiling and the
constant-median yardstick."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the device and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models import stats  # noqa: E402
from models.evaluation.metrics import CONSTANT, PRED_PREFIX  # noqa: E402

DPI = 110


def _save(fig: "plt.Figure", out: Path, name: str, files: dict[str, str]) -> None:
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=DPI)
    plt.close(fig)
    files[name] = f"{name}.png"


def write_plots(out: Path, cols: dict[str, np.ndarray], labels: list[str], metrics: dict) -> dict[str, str]:
    """Write every plot the data allows; returns ``{name: file}`` in report order."""
    files: dict[str, str] = {}
    ref, subjects = cols["nips_mean_rater"], cols["subject_id"]
    n = len(labels)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        ax.scatter(ref, cols[PRED_PREFIX + label], s=8, alpha=0.5)
        ax.plot([0, 7], [0, 7], "k--", lw=1)
        ax.set(xlim=(-0.2, 7.2), ylim=(-0.2, 7.2), xlabel="rated NIPS (mean of raters)", title=label)
    axes[0][0].set_ylabel("predicted NIPS")
    _save(fig, out, "scatter", files)

    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], labels):
        pred = cols[PRED_PREFIX + label]
        ba = stats.bland_altman(pred, ref, subjects)
        ax.scatter((pred + ref) / 2, pred - ref, s=8, alpha=0.5)
        for y, style in ((ba.bias, "-"), (ba.loa_low, "--"), (ba.loa_high, "--")):
            ax.axhline(y, color="k", ls=style, lw=1)
        ax.set(xlabel="mean of predicted and rated", title=f"{label}: bias {ba.bias:+.2f}, LoA ±{1.96 * ba.sd:.2f}")
    axes[0][0].set_ylabel("predicted − rated NIPS")
    _save(fig, out, "bland_altman", files)

    _agreement(out, labels, metrics, files)
    bars = [*labels, CONSTANT]
    for name, key in (("gestational_age", "by_gestational_age"), ("skin_tone", "by_skin_tone")):
        groups = sorted({g for label in bars for g in metrics[key][label]})
        if groups:
            values = {label: [metrics[key][label].get(g, np.nan) for g in groups] for label in bars}
            _grouped_bars(out, f"mae_by_{name}", f"MAE by {name.replace('_', ' ')}", groups, values, files)
    for name, key in (("availability", "by_availability"), ("confounder", "by_confounder")):
        rows = [r for r in (*labels, CONSTANT, "ceiling") if metrics[key].get(r)]
        if not rows:
            continue
        if key == "by_availability":
            groups = list(metrics[key][rows[0]])
            values = {r: [_mae(metrics[key][r][g]) for g in groups] for r in rows}
        else:
            groups = [f"{c} {side}" for c in metrics[key][rows[0]] for side in ("present", "absent")]
            values = {r: [_mae(metrics[key][r][c][side]) for c in metrics[key][r] for side in ("present", "absent")]
                      for r in rows}
        _grouped_bars(out, f"mae_by_{name}", f"MAE by {name}", groups, values, files)
    return files


def _mae(entry: dict) -> float:
    return np.nan if entry["mae"] is None else entry["mae"]


def _grouped_bars(out: Path, name: str, title: str, groups: list[str], values: dict[str, list[float]],
                  files: dict[str, str]) -> None:
    k = len(values)
    fig, ax = plt.subplots(figsize=(2.0 + 0.45 * len(groups) * k, 3.6))
    width = 0.8 / k
    for i, (label, row) in enumerate(values.items()):
        ax.bar(np.arange(len(groups)) + i * width, row, width, label=label,
               hatch="//" if label in (CONSTANT, "ceiling") else None)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, fontsize=7, rotation=15, ha="right")
    ax.set(ylabel="MAE vs mean rater (NIPS points)", title=title)
    ax.legend(fontsize=7)
    _save(fig, out, name, files)


def _agreement(out: Path, labels: list[str], metrics: dict, files: dict[str, str]) -> None:
    """MAE (with infant-bootstrap CI) and ICC(A,1) (with F CI) per model, the ceiling and the yardstick as lines."""
    models = metrics["models"]
    fig, (ax_mae, ax_icc) = plt.subplots(1, 2, figsize=(3.0 + 1.1 * len(labels), 3.8))
    x = np.arange(len(labels))
    mae = np.array([models[k]["mae"] for k in labels])
    ci = np.array([models[k]["mae_ci"] for k in labels]).reshape(-1, 2)
    ax_mae.bar(x, mae, yerr=np.abs(ci.T - mae), capsize=3, color="tab:blue")
    icc = np.array([models[k]["icc_a1"]["value"] for k in labels])
    icc_ci = np.array([[models[k]["icc_a1"]["ci_low"], models[k]["icc_a1"]["ci_high"]] for k in labels]).reshape(-1, 2)
    ax_icc.bar(x, icc, yerr=np.abs(icc_ci.T - icc), capsize=3, color="tab:green")
    ceiling, const = metrics["ceiling"], metrics["constant_median"]
    ax_mae.axhline(const["mae"], color="tab:red", ls=":", label=f"{CONSTANT} {const['mae']:.2f}")
    ax_icc.axhline(const["icc_a1"]["value"], color="tab:red", ls=":", label=f"{CONSTANT}")
    if ceiling["available"]:
        ax_mae.axhline(ceiling["mae"], color="k", ls="--", label=f"ceiling {ceiling['mae']:.2f}")
        ax_icc.axhline(ceiling["icc_a1"]["value"], color="k", ls="--", label=f"ceiling {ceiling['icc_a1']['value']:.2f}")
    for ax, title in ((ax_mae, "MAE vs mean rater (95% CI over infants)"), (ax_icc, "ICC(A,1) vs mean rater")):
        ax.set_xticks(x, labels, fontsize=8, rotation=20, ha="right")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    _save(fig, out, "agreement", files)
