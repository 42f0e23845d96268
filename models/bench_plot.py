"""``neopain bench --plot``: the report as one PNG a person can read at a glance.

Left: p50 latency of one score per backend, split into pre-processing and the four engines (the split says
whether a faster engine still matters). Right, when the report has the device-path estimates (issue 15's
targets): the pre-processing share three ways beside the 10 % target -- the loop's clip from camera frames,
the device's scoring thread (latency), and the CPU a score costs on the device, the camera thread's resizes
counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: the device and CI have no display
import matplotlib.pyplot as plt  # noqa: E402

DPI = 110
PART_ORDER = ("video_encoder", "audio_encoder", "vitals_encoder", "fusion")
SHARE_ROWS = (  # (target row of models.bench.int8_cpu_targets, bar label)
    ("pre-processing share of INT8 end to end (p50)", "loop: clip from\ncamera frames\n(latency)"),
    ("  device: scoring thread's share (estimate)", "device: scoring\nthread (latency)"),
    ("  device: CPU share, camera resizes counted (est.)", "device: CPU per\nscore, camera\nresizes counted"),
)


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the PNG for a :func:`models.bench.benchmark` report to ``path``; returns the path."""
    backends = report["backends"]
    targets = {t["target"]: t for t in report.get("targets") or []}
    shares = [(label, targets[row]) for row, label in SHARE_ROWS
              if row in targets and targets[row]["value"] is not None]
    fig, axes = plt.subplots(1, 2 if shares else 1, figsize=(11 if shares else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    names = list(backends)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bottom = [0.0] * len(names)
    stages = [("pre-processing", lambda r: r["preprocessing"]["p50"])] + [
        (part.replace("_", " "), lambda r, p=part: r["parts"].get(p, {}).get("p50", 0.0)) for part in PART_ORDER]
    for k, (label, value) in enumerate(stages):
        heights = [float(value(backends[n])) for n in names]
        ax.bar(names, heights, bottom=bottom, label=label, color=colours[k % len(colours)])
        bottom = [b + h for b, h in zip(bottom, heights)]
    for i, n in enumerate(names):
        ax.text(i, bottom[i], f"{backends[n]['end_to_end']['p50']:.0f} ms", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("p50 ms per score (batch %d)" % report["settings"]["batch"])
    ax.set_title("latency of one score", fontsize=10)
    ax.legend(fontsize=7)
    ax.tick_params(axis="x", labelsize=8)
    if shares:
        ax2 = axes[0][1]
        values = [100 * t["value"] for _, t in shares]
        bars = ax2.bar([label for label, _ in shares], values,
                       color=["#2ca02c" if t["met"] else "#d62728" for _, t in shares])
        for bar, v in zip(bars, values):
            ax2.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.1f} %", ha="center", va="bottom", fontsize=8)
        limit = 100 * shares[0][1]["limit"]
        ax2.axhline(limit, color="k", ls="--", lw=0.8)
        ax2.text(len(shares) - 0.5, limit, f"target {limit:g} %", ha="right", va="bottom", fontsize=8)
        ax2.set_ylabel("pre-processing share, INT8 (%)")
        ax2.set_title("pre-processing share of a score (green: within the target)", fontsize=10)
        ax2.tick_params(axis="x", labelsize=7)
    s = report["settings"]
    load = report["host"].get("load_average_samples") or {}
    fig.suptitle(f"{report['model']['config']} model, {s['threads']} threads, camera {s['camera'][0]}x{s['camera'][1]}"
                 + (f", face box {s['face_box'][2]} px" if s.get("face_box") else "")
                 + (f"; load average median {load['median']:.2f}" if load else ""), fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
