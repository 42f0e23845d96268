"""Measuring the running appliance: end-to-end score latency at the subscriber, and the daemon's CPU/RSS.

Used by ``neopain demo --measure DIR``. The subscriber and the daemon run on one machine, so they share
CLOCK_MONOTONIC: the latency of a score is the subscriber's ``time.monotonic_ns()`` at receipt minus the
window's ``end_mono_ns`` (the moment the window was cut, just after its last sample), split with the
daemon's own ``latency_ms`` into pre-processing, inference and the rest (calibration, outbox write,
MQTT publish and delivery). CPU % and RSS come from ``/proc/<pid>`` sampled in a thread.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


class ProcessSampler:
    """Samples a process's CPU % (of one core) and RSS every ``interval_s`` in a daemon thread."""

    def __init__(self, pid: int, interval_s: float = 2.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, int]] = []  # (t_s since start, cpu %, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)

    def start(self) -> "ProcessSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        t0 = time.monotonic()
        try:
            last_cpu, last_t = _cpu_seconds(self.pid), t0
            while not self._stop.wait(self.interval_s):
                cpu, now = _cpu_seconds(self.pid), time.monotonic()
                self.samples.append((now - t0, 100.0 * (cpu - last_cpu) / max(now - last_t, 1e-9), _rss_bytes(self.pid)))
                last_cpu, last_t = cpu, now
        except (FileNotFoundError, ProcessLookupError):  # the process ended
            return


class LatencyRecorder:
    """Per score: receive time minus window end, and the daemon's own breakdown."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._lock = threading.Lock()

    def on_score(self, msg: dict[str, Any], received_ns: int | None = None) -> None:
        received_ns = time.monotonic_ns() if received_ns is None else received_ns
        lat = msg.get("latency_ms", {})
        end_to_end = (received_ns - int(msg["window"]["end_mono_ns"])) / 1e6
        pre, infer = float(lat.get("preprocess", 0.0)), float(lat.get("infer", 0.0))
        with self._lock:
            self.rows.append({"t_s": received_ns / 1e9, "end_to_end_ms": end_to_end, "preprocess_ms": pre,
                              "inference_ms": infer, "publish_ms": end_to_end - pre - infer})


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "max": float(a.max()), "n": int(a.size)}


def write_report(out_dir: Path, latency: LatencyRecorder, sampler: ProcessSampler, context: dict[str, Any]) -> dict[str, Any]:
    """JSON summary and a PNG of latency, CPU and RSS over the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    rows, samples = latency.rows, sampler.samples
    cpu = [s[1] for s in samples]
    rss_mb = [s[2] / 2**20 for s in samples]
    settled = rss_mb[len(rss_mb) // 10 :] if rss_mb else []  # skip the warm-up tenth
    summary = {
        **context,
        "scores": len(rows),
        "latency_ms": {k: _pct([r[k] for r in rows]) for k in ("end_to_end_ms", "preprocess_ms", "inference_ms", "publish_ms")},
        "cpu_percent_of_one_core": _pct(cpu),
        "rss_mb": {**_pct(rss_mb), "first_after_warmup": settled[0] if settled else None, "last": rss_mb[-1] if rss_mb else None},
    }
    (out_dir / "daemon_measure.json").write_text(json.dumps(summary, indent=2))
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=False)
    if rows:
        t0 = rows[0]["t_s"]
        axes[0].plot([r["t_s"] - t0 for r in rows], [r["end_to_end_ms"] for r in rows], ".", ms=3, label="end to end")
        axes[0].plot([r["t_s"] - t0 for r in rows], [r["inference_ms"] for r in rows], ".", ms=3, label="inference")
        axes[0].set(ylabel="ms", title="score latency: window end -> subscriber")
        axes[0].legend(fontsize=8)
    if samples:
        axes[1].plot([s[0] for s in samples], cpu)
        axes[1].set(ylabel="CPU % (1 core)")
        axes[2].plot([s[0] for s in samples], rss_mb)
        axes[2].set(ylabel="RSS (MB)", xlabel="seconds")
    fig.tight_layout()
    fig.savefig(out_dir / "daemon_measure.png", dpi=100)
    plt.close(fig)
    return summary
