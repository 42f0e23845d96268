"""``neopain soak``: the demo's daemon at production cadence for a long time, then leak and latency verdicts.

Why a separate module: ``neopain demo --measure`` already runs the real thing (mosquitto, simulated bed, the
daemon as a subprocess, a subscriber) and keeps every raw sample (``appliance.devtools.measure``). A soak only adds
the *judgement*: criteria computed from those samples, never eyeballed, so a 30-minute run on the bench and
a 2.5-minute run in CI are judged by the same code with thresholds stated in the report.

The criteria (see :class:`SoakCriteria` for the defaults and why):

* **RSS growth** = (median RSS in the last 10 % of the run - median RSS in the first 10 % after warm-up)
  / that first median, below ``rss_growth_max``.
* **fds / threads**: max after warm-up - baseline after warm-up (median of the first 10 %) at most a small
  slack, and no upward trend: the rise of a least-squares line over the post-warm-up span stays below
  ``trend_max`` (a leak of one descriptor per score would rise by hundreds).
* **latency p99 stable**: the end-to-end latency (window end -> subscriber receipt) is binned (per minute
  in the full run); the median of the per-bin p99 in the last third of the bins over that in the first
  third is at most ``p99_ratio_max``. Medians of bins, so one minute in which another job loaded the shared
  machine does not decide it; the load average per third is reported beside it.
* **scores kept flowing**: at least ``min_delivery`` of the scores the cadence promises after warm-up arrived.

Warm-up starts at the first score the subscriber receives (model loading time varies with machine load)
and lasts ``warmup_s``: ONNX Runtime's arenas, the ring buffers and the outbox reach their working size.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES_FILE = "daemon_samples.json"
RESULT_FILE = "soak_result.json"
REPORT_FILE = "report.md"
DAEMON_LOG = "daemon.log"
# the line ``appliance.scoring.pipeline`` logs for every score it made (after the outbox commit)
SCORE_LINE = re.compile(r"score seq=(\d+) id=([0-9a-f-]{36})")


@dataclass(frozen=True)
class SoakCriteria:
    """Thresholds of a soak verdict.

    Defaults are for the 30-minute run. ``rss_growth_max`` 5 %: the RSS growth the reliability requirements allow over 30 minutes. ``fd_slack`` /
    ``thread_slack``: the daemon legitimately opens a few short-lived descriptors and threads (MQTT
    reconnect, outbox transactions, ONNX Runtime's pool waking) -- a handful, never a growing count.
    ``trend_max``: the fitted line may rise by less than 2 over the whole run, i.e. a leak of one per
    15 minutes or faster is caught. ``p99_ratio_max`` 1.5: on a 2-core machine shared with other jobs the
    per-minute p99 moves by tens of percent with their load (the 10-minute benchmark's p99 was 2.4x its
    p50); a daemon that degrades (a queue or an allocator growing) gets monotonically slower and passes 1.5x
    well before 30 minutes.
    """

    warmup_s: float = 120.0
    bin_s: float = 60.0
    rss_growth_max: float = 0.05
    fd_slack: int = 4
    thread_slack: int = 4
    trend_max: float = 2.0
    p99_ratio_max: float = 1.5
    min_delivery: float = 0.9
    min_scores_per_bin: int = 5


@dataclass
class Check:
    """One criterion: its name, the measured value, the limit and whether it held."""

    name: str
    value: float
    limit: float
    passed: bool
    detail: str


def _fit_rise(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope per second, rise of the fitted line over the span of ``t``)."""
    if t.size < 2 or float(np.ptp(t)) == 0.0:
        return 0.0, 0.0
    slope = float(np.polyfit(t, y.astype(float), 1)[0])
    return slope, slope * float(np.ptp(t))


def delivery_counts(doc: dict[str, Any], daemon_log: str) -> dict[str, int] | None:
    """Scores produced (the daemon's log) / delivered (distinct ids at the subscriber) / lost.

    Only scores up to the last sequence the subscriber received count as produced: the demo stops listening
    before it stops the daemon, so the last one or two made are never meant to arrive. None when the rows
    carry no message ids (runs recorded before ``LatencyRecorder`` kept them).
    """
    received = {(r.get("sequence"), r.get("message_id")) for r in doc.get("scores") or []}
    if not received or any(i is None for _, i in received):
        return None
    last = max(seq for seq, _ in received)
    produced = {(int(seq), i) for seq, i in SCORE_LINE.findall(daemon_log) if int(seq) <= last}
    delivered = {i for _, i in received}
    return {"produced": len(produced), "delivered": len(delivered),
            "lost": len({i for _, i in produced} - delivered)}


def analyse(doc: dict[str, Any], criteria: SoakCriteria, daemon_log: str | None = None) -> dict[str, Any]:
    """The verdict of one run from ``daemon_samples.json`` (see ``appliance.devtools.measure.write_samples``).

    Returns a JSON-able dict: ``checks`` (list of :class:`Check`), ``passed``, the series used for plots
    (``bins``) and the summary numbers. Raises ValueError naming what is missing when the run is too short.
    """
    samples, scores = doc.get("samples") or [], doc.get("scores") or []
    if not scores:
        raise ValueError("soak: no score was received (field 'scores' is empty); nothing to judge")
    if len(samples) < 10:
        raise ValueError(f"soak: only {len(samples)} process samples (field 'samples'); need at least 10")
    cadence = float(doc.get("context", {}).get("cadence_s", 2.0))
    t = np.array([s["t_s"] for s in samples])
    score_t = np.array([s["t_s"] for s in scores])
    e2e = np.array([s["end_to_end_ms"] for s in scores])
    warm_end = float(score_t.min()) + criteria.warmup_s
    end = float(t.max())
    span = end - warm_end
    post = t >= warm_end
    if post.sum() < 10 or span <= 0:
        raise ValueError(f"soak: the run ends {end - score_t.min():.0f} s after the first score, which leaves "
                         f"too little after the {criteria.warmup_s:g} s warm-up")
    head = post & (t < warm_end + 0.1 * span)
    tail = t >= end - 0.1 * span
    series = {k: np.array([s[k] for s in samples], dtype=float) for k in ("rss_bytes", "fds", "threads", "load1", "cpu_percent")}
    checks: list[Check] = []

    rss_mb = series["rss_bytes"] / 2**20
    rss_head, rss_tail = float(np.median(rss_mb[head])), float(np.median(rss_mb[tail]))
    growth = (rss_tail - rss_head) / rss_head
    rss_slope, _ = _fit_rise(t[post], rss_mb[post])
    checks.append(Check("RSS growth", growth, criteria.rss_growth_max, growth < criteria.rss_growth_max,
                        f"median {rss_head:.1f} MB in the first 10 % after warm-up -> {rss_tail:.1f} MB in the last "
                        f"10 % ({100 * growth:+.2f} %); fitted slope {rss_slope * 3600:+.1f} MB/h"))
    for key, slack in (("fds", criteria.fd_slack), ("threads", criteria.thread_slack)):
        values = series[key]
        base = float(np.median(values[head]))
        rise = float(values[post].max()) - base
        _, fitted = _fit_rise(t[post], values[post])
        ok = rise <= slack and fitted < criteria.trend_max
        checks.append(Check(f"{key} leak", rise, slack, ok,
                            f"{base:g} after warm-up, max {values[post].max():g} ({rise:+g}, limit +{slack}); "
                            f"fitted rise over the run {fitted:+.2f} (limit < {criteria.trend_max:g})"))

    bins = []
    edges = np.arange(warm_end, end + 1e-9, criteria.bin_s)
    for lo in edges:
        hi = lo + criteria.bin_s
        if hi > end + 1e-9:
            break
        sel = (score_t >= lo) & (score_t < hi)
        if sel.sum() < criteria.min_scores_per_bin:
            continue
        load = series["load1"][(t >= lo) & (t < hi)]
        bins.append({"t_s": float(lo - warm_end + criteria.bin_s / 2), "n": int(sel.sum()),
                     "p50_ms": float(np.percentile(e2e[sel], 50)), "p99_ms": float(np.percentile(e2e[sel], 99)),
                     "load1": float(load.mean()) if load.size else float("nan")})
    if len(bins) < 3:
        checks.append(Check("latency p99 stable", float("nan"), criteria.p99_ratio_max, False,
                            f"only {len(bins)} bins of {criteria.bin_s:g} s with >= {criteria.min_scores_per_bin} "
                            "scores; need 3"))
    else:
        third = max(1, len(bins) // 3)
        first, last = bins[:third], bins[-third:]
        p99_first = float(np.median([b["p99_ms"] for b in first]))
        p99_last = float(np.median([b["p99_ms"] for b in last]))
        ratio = p99_last / p99_first
        loads = np.array([b["load1"] for b in bins])
        r_load = float(np.corrcoef([b["p99_ms"] for b in bins], loads)[0, 1]) if np.ptp(loads) > 0 else float("nan")
        checks.append(Check("latency p99 stable", ratio, criteria.p99_ratio_max, ratio <= criteria.p99_ratio_max,
                            f"median per-{criteria.bin_s:g}-s p99 {p99_first:.0f} ms in the first third -> "
                            f"{p99_last:.0f} ms in the last ({ratio:.2f}x); load average "
                            f"{np.nanmean([b['load1'] for b in first]):.1f} -> {np.nanmean([b['load1'] for b in last]):.1f}; "
                            f"Pearson r of per-bin p99 with load {r_load:.2f}"))
    received = int(((score_t >= warm_end) & (score_t <= end)).sum())
    expected = span / cadence
    delivery = received / expected
    gaps = np.diff(np.sort(score_t[score_t >= warm_end]))
    checks.append(Check("scores kept flowing", delivery, criteria.min_delivery, delivery >= criteria.min_delivery,
                        f"{received} scores after warm-up of {expected:.0f} at {cadence:g} s cadence; "
                        f"longest gap {float(gaps.max()) if gaps.size else float('nan'):.1f} s"))
    counts = delivery_counts(doc, daemon_log) if daemon_log is not None else None
    if counts is not None:
        checks.append(Check("no score lost", counts["lost"], 0, counts["lost"] == 0 and counts["produced"] > 0,
                            f"{counts['produced']} produced (daemon log), {counts['delivered']} delivered, "
                            f"{counts['lost']} lost"))
    post_scores = e2e[score_t >= warm_end]
    return {
        "duration_s": float(end - score_t.min()),
        "measured_after_warmup_s": span,
        "cadence_s": cadence,
        "criteria": asdict(criteria),
        "passed": all(c.passed for c in checks),
        "checks": [asdict(c) for c in checks],
        "scores": len(scores),
        "latency_ms": {"p50": float(np.percentile(post_scores, 50)), "p99": float(np.percentile(post_scores, 99)),
                       "max": float(post_scores.max())},
        "rss_mb": {"after_warmup": rss_head, "end": rss_tail},
        "load1": {"mean": float(series["load1"][post].mean()), "max": float(series["load1"][post].max())},
        "cpu_percent_mean": float(series["cpu_percent"][post].mean()),
        "counts": counts,
        "bins": bins,
        "warmup_end_s": warm_end,
    }


def result_row(result: dict[str, Any]) -> dict[str, Any]:
    """The reliability-table row (``tests/reliability/results.py`` fields) that states the measured duration."""
    minutes = result["duration_s"] / 60
    checks = {c["name"]: c for c in result["checks"]}
    observed = (f"{minutes:.1f} min measured ({result['scores']} scores): RSS {100 * checks['RSS growth']['value']:+.2f} %; "
                f"fds +{checks['fds leak']['value']:g}, threads +{checks['threads leak']['value']:g}; "
                f"p99 last/first third {checks['latency p99 stable']['value']:.2f}x; e2e p50 "
                f"{result['latency_ms']['p50']:.0f} / p99 {result['latency_ms']['p99']:.0f} ms; "
                f"load avg mean {result['load1']['mean']:.1f} (max {result['load1']['max']:.1f})")
    c = result["criteria"]
    expected = (f"RSS growth < {100 * c['rss_growth_max']:g} %, fds/threads +<= {c['fd_slack']}/{c['thread_slack']} "
                f"with no trend, p99 last/first third <= {c['p99_ratio_max']:g}x, >= {100 * c['min_delivery']:g} % "
                "of scores delivered" + (", none lost" if result.get("counts") else ""))
    return {"section": "soak", "name": f"soak {minutes:.0f} min at cadence {result['cadence_s']:g} s",
            "expected": expected, "observed": observed, "passed": bool(result["passed"]),
            **(result["counts"] or {"delivered": int(result["scores"])})}


def plot(doc: dict[str, Any], result: dict[str, Any], out_dir: Path) -> list[str]:
    """PNGs of RSS, fds, threads (with the warm-up shaded and the fitted line) and per-bin p50/p99 latency
    with the load average; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = doc["samples"]
    t_min = np.array([s["t_s"] for s in samples]) / 60
    warm = result["warmup_end_s"] / 60
    names = []
    for key, label, scale in (("rss_bytes", "RSS (MB)", 1 / 2**20), ("fds", "open file descriptors", 1),
                              ("threads", "threads", 1)):
        y = np.array([s[key] for s in samples], dtype=float) * scale
        fig, ax = plt.subplots(figsize=(8, 3.2))
        ax.plot(t_min, y, lw=1)
        ax.axvspan(t_min.min(), warm, color="0.9", label="warm-up")
        post = t_min >= warm
        if post.sum() >= 2:
            k, b = np.polyfit(t_min[post], y[post], 1)
            ax.plot(t_min[post], k * t_min[post] + b, "--", lw=1, label=f"fit {k * 60:+.2f}/h")
        ax.set(xlabel="minutes since the daemon started", ylabel=label, title=f"daemon {label}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{key.split('_')[0]}.png"
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        names.append(name)
    bins = result["bins"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    if bins:
        bt = [warm + b["t_s"] / 60 for b in bins]
        ax.plot(bt, [b["p50_ms"] for b in bins], "o-", ms=3, label="p50")
        ax.plot(bt, [b["p99_ms"] for b in bins], "o-", ms=3, label="p99")
        ax2 = ax.twinx()
        ax2.plot(bt, [b["load1"] for b in bins], color="0.6", lw=1, label="load average (1 min)")
        ax2.set_ylabel("load average", color="0.4")
        ax2.legend(fontsize=8, loc="upper right")
    ax.set(xlabel="minutes since the daemon started", ylabel="ms",
           title=f"end-to-end latency per {result['criteria']['bin_s']:g} s (window end -> subscriber)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=100)
    plt.close(fig)
    return names + ["latency.png"]


def write_report(out_dir: Path, result: dict[str, Any], pngs: list[str], command: str) -> Path:
    """``report.md``: the verdict table, the plots and how to re-run it."""
    lines = [f"# Soak: {result['duration_s'] / 60:.1f} minutes at cadence {result['cadence_s']:g} s",
             "", f"Command: `{command}`. Verdict: **{'PASS' if result['passed'] else 'FAIL'}**.", "",
             f"Warm-up {result['criteria']['warmup_s']:g} s from the first score; "
             f"{result['measured_after_warmup_s'] / 60:.1f} min judged after it. {result['scores']} scores; "
             f"end-to-end p50 {result['latency_ms']['p50']:.1f} ms, p99 {result['latency_ms']['p99']:.1f} ms, "
             f"max {result['latency_ms']['max']:.1f} ms; daemon CPU {result['cpu_percent_mean']:.0f} % of one core; "
             f"machine load average (shared, 2 cores) mean {result['load1']['mean']:.2f}, max {result['load1']['max']:.2f}.",
             "", "| criterion | measured | limit | result | detail |", "|---|---|---|---|---|"]
    for c in result["checks"]:
        pct = c["name"] == "RSS growth"
        value = f"{100 * c['value']:+.2f} %" if pct else f"{c['value']:.4g}"
        limit = f"< {100 * c['limit']:g} %" if pct else f"{c['limit']:.4g}"
        lines.append(f"| {c['name']} | {value} | {limit} | {'pass' if c['passed'] else '**FAIL**'} "
                     f"| {c['detail']} |")
    lines += ["", "Criteria and why: `appliance/devtools/soak.py` (`SoakCriteria`).", ""]
    lines += [f"![{p}]({p})" for p in pngs]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_reliability_preamble(out_dir: Path, result: dict[str, Any]) -> Path | None:
    """``reliability_preamble.md``: the soak's plots and verdict for ``render.py --preamble`` of
    ``docs/reliability.md`` (links relative to ``docs/``); only for a run kept under ``docs/``."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    try:
        rel = out_dir.resolve().relative_to(docs)
    except ValueError:
        return None
    lines = [f"### Soak: {result['duration_s'] / 60:.1f} minutes at cadence {result['cadence_s']:g} s "
             f"({'pass' if result['passed'] else 'FAIL'})", "",
             f"Full report: [{rel / REPORT_FILE}]({rel / REPORT_FILE}). The machine is shared (2 cores): load "
             f"average mean {result['load1']['mean']:.2f}, max {result['load1']['max']:.2f} during the run.", ""]
    lines += [f"![{name}]({rel / name})" for name in ("latency.png", "rss.png", "fds.png", "threads.png")]
    path = out_dir / "reliability_preamble.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def judge(out_dir: Path, criteria: SoakCriteria, command: str) -> dict[str, Any]:
    """Analyse ``out_dir/daemon_samples.json``; write ``soak_result.json`` (with its table row), PNGs, report."""
    path = out_dir / SAMPLES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"soak: {path} not found (run `neopain soak --measure {out_dir}` first)")
    doc = json.loads(path.read_text())
    log = out_dir / DAEMON_LOG
    result = analyse(doc, criteria, log.read_text(errors="replace") if log.is_file() else None)
    result["row"] = result_row(result)
    result["command"] = command
    pngs = plot(doc, result, out_dir)
    write_report(out_dir, result, pngs, command)
    write_reliability_preamble(out_dir, result)
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------------------------- CLI
def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain soak``: the demo's, with soak defaults, plus the criteria."""
    from appliance.devtools.demo import add_demo_arguments

    add_demo_arguments(parser)
    parser.set_defaults(duration=1800.0, workdir=Path("out/soak"), measure=Path("out/soak/result"))
    parser.add_argument("--judge-only", action="store_true",
                        help="do not run: judge the samples already in --measure DIR again")
    defaults = SoakCriteria()
    for field, help_text in (("warmup_s", "seconds after the first score not judged"),
                             ("bin_s", "latency bin length in seconds"),
                             ("rss_growth_max", "largest allowed RSS growth (fraction)"),
                             ("fd_slack", "largest allowed rise of open fds"),
                             ("thread_slack", "largest allowed rise of threads"),
                             ("p99_ratio_max", "largest allowed p99 ratio last/first third")):
        default = getattr(defaults, field)
        parser.add_argument("--" + field.replace("_", "-"), type=type(default), default=default,
                            help=f"{help_text} (default {default})")


def run_soak(args: argparse.Namespace) -> int:
    """``neopain soak``: 0 when every criterion held, 1 when one failed or the run did not complete."""
    import sys

    from appliance.devtools.demo import run_demo

    out_dir = Path(args.measure)
    criteria = SoakCriteria(warmup_s=args.warmup_s, bin_s=args.bin_s, rss_growth_max=args.rss_growth_max,
                            fd_slack=args.fd_slack, thread_slack=args.thread_slack, p99_ratio_max=args.p99_ratio_max)
    command = f"neopain soak --duration {args.duration:g} --cadence {args.cadence:g}"
    if not args.judge_only:
        code = run_demo(args)
        if code != 0:
            print(f"[soak] the demo run failed (exit {code}); not judged", file=sys.stderr)
            return 1
        logs = sorted(Path(args.workdir).glob("run-*/daemon.log"), key=lambda p: p.stat().st_mtime)
        if logs:  # the demo's run folder is a fresh temporary one: keep its log with the samples
            shutil.copyfile(logs[-1], out_dir / DAEMON_LOG)
    else:
        prior = out_dir / RESULT_FILE
        if prior.is_file():  # keep the command of the run that produced the samples
            command = json.loads(prior.read_text()).get("command", command)
        elif (out_dir / SAMPLES_FILE).is_file():  # samples from `neopain demo --measure DIR`
            ctx = json.loads((out_dir / SAMPLES_FILE).read_text()).get("context", {})
            command = (f"neopain demo --duration {ctx.get('duration_s', 0):g} --cadence {ctx.get('cadence_s', 0):g} "
                       f"--measure DIR; neopain soak --judge-only --measure DIR")
    try:
        result = judge(out_dir, criteria, command)
    except (ValueError, FileNotFoundError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    for c in result["checks"]:
        print(f"[soak] {'pass' if c['passed'] else 'FAIL'}  {c['name']}: {c['detail']}")
    print(f"[soak] {'PASS' if result['passed'] else 'FAIL'}: {out_dir / REPORT_FILE}")
    return 0 if result["passed"] else 1
