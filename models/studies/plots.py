"""The studies' PNGs: the paired differences as a forest plot, the models beside the ceiling, the learning curve."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110


def _err(value: float, ci: list) -> list[list[float]]:
    return [[value - ci[0]], [ci[1] - value]]


def fusion_plots(result: dict, out: Path) -> dict[str, str]:
    """Forest plot of the paired per-infant differences per subset, and MAE/ICC per model with CIs."""
    files = {}
    subsets = list(result["subsets"])
    pairs = list(result["subsets"][subsets[0]]["paired"])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(subsets) * len(pairs) + 1.5))
    y, ticks, labels = 0, [], []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name in subsets:
        for j, pair in enumerate(pairs):
            d = result["subsets"][name]["paired"][pair]
            if d["mean_diff"] is not None:
                ax.errorbar(d["mean_diff"], -y, xerr=_err(d["mean_diff"], d["ci"]), fmt="o", color=colours[j % len(colours)],
                            capsize=3, label=pair if name == subsets[0] else None)
            ticks.append(-y)
            labels.append(f"{name} (n={d['n_infants']})" if j == 0 else "")
            y += 1
        y += 0.5
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("per-infant MAE difference, NIPS points (mean, bootstrap 95 % CI); < 0: first model better",
                  fontsize=8)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Paired differences, seeds averaged per infant")
    fig.tight_layout()
    files["paired"] = "fusion_question_paired.png"
    fig.savefig(out / files["paired"], dpi=DPI)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    names = list(result["models"])
    for ax, key, title in ((axes[0], "mae", "MAE vs mean rater"), (axes[1], "icc_a1", "ICC(A,1) vs mean rater")):
        for i, name in enumerate(names):
            m = result["models"][name]
            ax.errorbar(i, m[key], yerr=_err(m[key], m[f"{key}_ci"]), fmt="o", capsize=4)
        if "ceiling" in result:
            c = result["ceiling"]
            ax.axhline(c[key], color="g", ls="--", label=f"ceiling {c[key]:.3f}")
            ax.axhspan(c[f"{key}_ci"][0], c[f"{key}_ci"][1], color="g", alpha=0.1)
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_title(title + " (infant-bootstrap 95 % CI)", fontsize=9)
    fig.tight_layout()
    files["models"] = "fusion_question_models.png"
    fig.savefig(out / files["models"], dpi=DPI)
    plt.close(fig)
    return files


def curve_plot(result: dict, out: Path) -> dict[str, str]:
    """MAE and ICC(A,1) on the unseen cohort vs training infants, per model, with the ceiling and the constant."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = {**result["models"], "constant median": result["constant_median"]}
    for ax, key, title in ((axes[0], "mae", "MAE vs mean rater"), (axes[1], "icc_a1", "ICC(A,1) vs mean rater")):
        for label, points in series.items():
            n = [p["n"] for p in points]
            v = [p[key] for p in points]
            lo = [p[f"{key}_ci"][0] for p in points]
            hi = [p[f"{key}_ci"][1] for p in points]
            style = ":" if label == "constant median" else "-"
            line, = ax.plot(n, v, style, marker="o", label=label)
            ax.fill_between(n, lo, hi, color=line.get_color(), alpha=0.08)
        ceiling = result.get("ceiling") or {}
        if ceiling.get("available"):
            value = ceiling["mae"] if key == "mae" else ceiling["icc_a1"]["value"]
            ax.axhline(value, color="k", ls="--", label="ceiling (truth vs mean rater)")
            ax.annotate(f"ceiling {value:.3f}", (0.01, value), xycoords=("axes fraction", "data"), fontsize=7,
                        va="bottom")
        ax.set_xscale("log")
        ax.minorticks_off()
        ticks = sorted({p["n"] for points in series.values() for p in points})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("training infants")
        ax.set_title(title + " on the unseen cohort", fontsize=9)
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    name = "learning_curve.png"
    fig.savefig(out / name, dpi=DPI)
    plt.close(fig)
    return {"curve": name}
