"""Measuring the running appliance: end-to-end score latency at the subscriber, and the daemon's CPU/RSS.

Used by ``neopain demo --measure DIR``. The subscriber and the daemon run on one machine, so they share
CLOCK_MONOTONIC: the latency of a score is the subscriber's ``time.monotonic_ns()`` at receipt minus the
window's ``end_mono_ns`` (the moment the window was cut, just after its last sample), split with the
daemon's own ``latency_ms`` into pre-processing, inference and the rest (calibration, outbox write,
MQTT publish and delivery). CPU %, RSS, open fds, threads and the machine's load average come from
``/proc`` sampled in a thread; ``write_report`` also keeps every raw sample and score
(``daemon_samples.json``) so a soak can be analysed again later (``appliance.devtools.soak``) without re-running it.
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


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _status_fields(pid: int) -> dict[str, str]:
    """``/proc/PID/status`` as a dict (``VmRSS`` -> ``"391234 kB"``, ``Threads`` -> ``"12"``)."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def process_snapshot(pid: int) -> dict[str, float]:
    """RSS (VmRSS, bytes), open file descriptors, threads and the 1-min load average of the machine, now.

    Why these: a leak in a long-running daemon shows as one of them growing -- memory (RSS), sockets or
    files never closed (fds), workers started per reconnect and never joined (threads); the load average
    says how busy the shared machine was, so a latency bump can be told apart from a daemon problem.
    Raises FileNotFoundError / ProcessLookupError when the process has gone.
    """
    status = _status_fields(pid)
    try:
        rss_kb = int(status["VmRSS"].split()[0])
        threads = int(status["Threads"])
    except (KeyError, ValueError, IndexError) as exc:
        raise ProcessLookupError(f"/proc/{pid}/status has no readable VmRSS/Threads: {exc}") from exc
    return {"rss_bytes": rss_kb * 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads,
            "load1": os.getloadavg()[0]}


class ProcessSampler:
    """Samples a process's CPU % (of one core), RSS, fds, threads and the load average every ``interval_s``.

    ``samples`` rows are ``(t_s since start, cpu %, rss bytes, fds, threads, load1)``; ``t0_mono_s`` is the
    start on ``time.monotonic()`` so the rows line up with score receipt times.
    """

    FIELDS = ("t_s", "cpu_percent", "rss_bytes", "fds", "threads", "load1")

    def __init__(self, pid: int, interval_s: float = 2.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, int, int, int, float]] = []
        self.t0_mono_s = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)

    def start(self) -> "ProcessSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        t0 = self.t0_mono_s = time.monotonic()
        try:
            last_cpu, last_t = _cpu_seconds(self.pid), t0
            while not self._stop.wait(self.interval_s):
                cpu, now = _cpu_seconds(self.pid), time.monotonic()
                snap = process_snapshot(self.pid)
                self.samples.append((now - t0, 100.0 * (cpu - last_cpu) / max(now - last_t, 1e-9),
                                     int(snap["rss_bytes"]), int(snap["fds"]), int(snap["threads"]), snap["load1"]))
                last_cpu, last_t = cpu, now
        except (FileNotFoundError, ProcessLookupError):  # the process ended
            return


class LatencyRecorder:
    """Per score: receive time minus window end, and the daemon's own breakdown."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def on_score(self, msg: dict[str, Any], received_ns: int | None = None) -> None:
        received_ns = time.monotonic_ns() if received_ns is None else received_ns
        lat = msg.get("latency_ms", {})
        end_to_end = (received_ns - int(msg["window"]["end_mono_ns"])) / 1e6
        pre, infer = float(lat.get("preprocess", 0.0)), float(lat.get("infer", 0.0))
        with self._lock:
            self.rows.append({"t_s": received_ns / 1e9, "end_to_end_ms": end_to_end, "preprocess_ms": pre,
                              "inference_ms": infer, "publish_ms": end_to_end - pre - infer,
                              "sequence": int(msg.get("sequence", -1)), "message_id": msg.get("message_id")})


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "max": float(a.max()), "n": int(a.size)}


def write_samples(path: Path, latency: LatencyRecorder, sampler: ProcessSampler, context: dict[str, Any]) -> None:
    """Every raw sample and score row, with score times on the sampler's clock (seconds since it started)."""
    t0 = sampler.t0_mono_s
    doc = {"context": context, "sampler_interval_s": sampler.interval_s,
           "samples": [dict(zip(ProcessSampler.FIELDS, s)) for s in list(sampler.samples)],
           "scores": [{**r, "t_s": r["t_s"] - t0} for r in list(latency.rows)]}
    path.write_text(json.dumps(doc))


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
    write_samples(out_dir / "daemon_samples.json", latency, sampler, context)
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
