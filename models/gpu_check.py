"""The GPU check behind ``scripts/gpu-check.sh``: the TensorRT path end to end on a machine with an NVIDIA GPU.

Why: the device's main path (TensorRT FP16/INT8 engines, the engine cache, the CUDA buffers) cannot run on
the CPU machines the project is developed on. This check runs every piece of it once, on whatever NVIDIA GPU
is at hand, and writes one report:

1. export the full model with random weights and its INT8 (QDQ) parts, calibrated on synthetic windows
   written in the ``calibrate capture-int8`` format (``neopain export --random --int8 DIR``);
2. build FP16 and INT8 engines through ``neopain build-engines`` (INT8 from the QDQ graph: explicit
   quantization);
3. parity: ``nips`` of TensorRT FP16 and INT8 against ONNX Runtime FP32 (CPU) on fixed synthetic windows, at
   batch 1 and the largest batch;
4. ``neopain bench`` on TensorRT (FP16, INT8) and on CUDA PyTorch (FP32, FP16) at each batch;
5. ``report.json`` + ``report.txt`` in ``--out``, with every step's wall time and command line.

The script installs the packages; this module runs the steps (each command in a child process, as an
operator would type it) and refuses clearly, before doing anything, when there is no NVIDIA GPU. Never run
in CI: it needs a GPU and minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from models.configs import CONFIGS

EXIT_NO_GPU = 3
BUDGET_S = 8 * 60
#: Parity limits, |nips| on the 0-7 scale: FP16 against ONNX Runtime FP32 (largest difference), and TensorRT
#: INT8 against ONNX Runtime INT8 from the same QDQ graph (mean; the accuracy check's own bound).
FP16_MAX_ABS_DIFF = 0.05
INT8_MEAN_ABS_DIFF = 0.05
NEOPAIN = (sys.executable, "-m", "appliance.cli")  # the `neopain` command of this interpreter


class CheckFailed(RuntimeError):
    """A step that failed; the report says which and why."""


def nvidia_gpus() -> tuple[list[str], str]:
    """Names of the NVIDIA GPUs here (``nvidia-smi -L``) and, when there are none, why."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi is not on PATH (no NVIDIA driver installed)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    gpus = [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]
    if out.returncode != 0 or not gpus:
        return [], f"nvidia-smi lists no GPU (exit {out.returncode}: {(out.stderr or out.stdout).strip()[:200]})"
    return gpus, ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="report directory (report.json, report.txt, logs)")
    parser.add_argument("--work", help="where the model and engines go (default: OUT/work)")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="full", help="network size (default full)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes to bench (default 1,8)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per bench (default 20)")
    parser.add_argument("--calibration-windows", type=int, default=16, help="synthetic INT8 calibration windows (default 16)")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="time the whole check should fit in (default 480)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    except ValueError:
        parser.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        parser.error(f"--batches needs positive batch sizes, got {args.batches!r}")
    if args.runs < 1 or args.calibration_windows < 4:
        parser.error("--runs must be >= 1 and --calibration-windows >= 4")
    return args


class Steps:
    """Runs and records the steps: name, command, seconds, exit status, last lines of output."""

    def __init__(self, out: Path, budget_s: float = BUDGET_S) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.budget_s = budget_s

    def command(self, name: str, argv: Sequence[str], timeout_s: float = 600) -> subprocess.CompletedProcess:
        """Run one step; it may take what is left of the budget (at most ``timeout_s``), so an overrun stops the
        check with a report instead of running on."""
        t0 = time.monotonic()
        log = self.out / f"{name}.log"
        left = self.budget_s - self.elapsed_s
        if left <= 0:
            self._record(name, argv, t0, None, "not started: the budget is spent")
            raise CheckFailed(f"{name}: not started, the {self.budget_s:.0f} s budget is spent")
        limit = min(timeout_s, left)
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired as exc:
            why = "the budget ran out" if limit < timeout_s else f"its {timeout_s:.0f} s limit"
            self._record(name, argv, t0, None, f"stopped after {limit:.0f} s: {why}")
            log.write_text(f"{exc}\n", encoding="utf-8")
            raise CheckFailed(f"{name}: stopped after {limit:.0f} s ({why})") from None
        log.write_text(f"$ {' '.join(argv)}\n{done.stdout}\n{done.stderr}", encoding="utf-8")
        tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
        self._record(name, argv, t0, done.returncode, "\n".join(tail))
        if done.returncode != 0:
            raise CheckFailed(f"{name} exited {done.returncode}: {' | '.join(tail[-3:])} (log: {log})")
        return done

    def call(self, name: str, fn: Any, *args: Any) -> Any:
        t0 = time.monotonic()
        try:
            result = fn(*args)
        except Exception as exc:
            self._record(name, [fn.__name__], t0, 1, f"{type(exc).__name__}: {exc}")
            raise CheckFailed(f"{name}: {type(exc).__name__}: {exc}") from exc
        self._record(name, [fn.__name__], t0, 0, "")
        return result

    def _record(self, name: str, argv: Sequence[str], t0: float, rc: int | None, tail: str) -> None:
        self.rows.append({"step": name, "command": " ".join(argv), "seconds": round(time.monotonic() - t0, 1),
                          "exit": rc, "tail": tail})

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


def write_calibration(config: str, directory: Path, count: int) -> Path:
    """Synthetic calibration windows (``.npz``, the capture-int8 format) for a random-weight ``config`` model."""
    from models.bench import synthetic_raw_window
    from models.configs import get_config
    from models.engines.windows import write_calibration_window
    from models.features.inputs import model_inputs

    cfg = get_config(config)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        window = model_inputs(synthetic_raw_window(cfg, (320, 240), seed=1000 + i), cfg)
        write_calibration_window(directory / f"window-{i:04d}.npz", window)
    return directory


def parity(model_dir: Path, cache_dir: Path, batches: Sequence[int]) -> dict[str, Any]:
    """max/mean |nips| of TensorRT FP16 and INT8 vs ONNX Runtime FP32 (and INT8) at each batch size, and the
    same engines run from a second thread (the daemon scores in its own thread, not where it loaded them).
    ``failures`` lists what is beyond :data:`FP16_MAX_ABS_DIFF` / :data:`INT8_MEAN_ABS_DIFF`, and a second
    thread's scores that differ (the check then fails, with the numbers in the report)."""
    import threading

    import numpy as np

    from models.bench import drift_windows
    from models.engines.runtime import ScoringEngines, stack_windows
    from models.manifest import read_manifest

    cfg = read_manifest(model_dir).model_config()
    windows = drift_windows(cfg, max(batches))
    reference = {}
    with ScoringEngines(model_dir, "onnxruntime", precision="fp32", ort_providers=("CPUExecutionProvider",)) as ort32, \
            ScoringEngines(model_dir, "onnxruntime", precision="int8", ort_providers=("CPUExecutionProvider",)) as ort8:
        for b in batches:
            batch = stack_windows(windows[:b])
            reference[b] = (ort32.run(batch).nips, ort8.run(batch).nips)
    out: dict[str, Any] = {}
    failures = []
    for precision in ("fp16", "int8"):
        with ScoringEngines(model_dir, "tensorrt", cache_dir=cache_dir, precision=precision) as trt:
            for b in batches:
                batch = stack_windows(windows[:b])
                got = trt.run(batch).nips
                threaded: dict[str, Any] = {}
                worker = threading.Thread(target=lambda: threaded.update(nips=trt.run(batch).nips),  # noqa: B023
                                          name="parity-scoring")
                worker.start()
                worker.join()
                vs32, vs8 = np.abs(got - reference[b][0]), np.abs(got - reference[b][1])
                thread_diff = float(np.abs(threaded["nips"] - got).max()) if "nips" in threaded else None
                label = f"tensorrt_{precision}_batch{b}"
                out[label] = {
                    "vs_onnxruntime_fp32_max": float(vs32.max()), "vs_onnxruntime_fp32_mean": float(vs32.mean()),
                    "vs_onnxruntime_int8_max": float(vs8.max()), "vs_onnxruntime_int8_mean": float(vs8.mean()),
                    "second_thread_max": thread_diff, "windows": b,
                }
                if thread_diff is None or thread_diff > 1e-4:
                    failures.append(f"{label}: run from a second thread "
                                    + ("failed (see the log)" if thread_diff is None else f"differs by {thread_diff:.5f}"))
                if precision == "fp16" and vs32.max() > FP16_MAX_ABS_DIFF:
                    failures.append(f"{label}: |nips - ONNX Runtime FP32| max {vs32.max():.4f} > {FP16_MAX_ABS_DIFF}")
                if precision == "int8" and vs8.mean() > INT8_MEAN_ABS_DIFF:
                    failures.append(f"{label}: |nips - ONNX Runtime INT8| mean {vs8.mean():.4f} > {INT8_MEAN_ABS_DIFF}")
    out["failures"] = failures
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The text report: GPU, steps with times, parity, and the TensorRT / PyTorch latencies."""
    lines = [f"neopain GPU check: {report['verdict']}", f"GPU: {', '.join(report['gpus']) or 'none'}",
             f"host: {report['host']}", f"total {report['elapsed_s']:.0f} s (budget {report['budget_s']:.0f} s)", ""]
    for row in report["steps"]:
        lines.append(f"  {row['step']:24s} {row['seconds']:7.1f} s  exit {row['exit']}")
    if report.get("error"):
        lines += ["", f"failed: {report['error']}"]
    for name, p in report.get("parity", {}).items():
        if name == "failures":
            continue
        thread = p.get("second_thread_max")
        lines.append(f"parity {name}: nips vs ONNX Runtime FP32 max {p['vs_onnxruntime_fp32_max']:.4f} "
                     f"mean {p['vs_onnxruntime_fp32_mean']:.4f}; vs ONNX Runtime INT8 mean "
                     f"{p['vs_onnxruntime_int8_mean']:.4f}; second thread "
                     + ("failed" if thread is None else f"max diff {thread:.2g}"))
    for name, bench in report.get("bench", {}).items():
        for label, r in bench.get("backends", {}).items():
            e2e, eng = r["end_to_end"], r["engine"]
            lines.append(f"bench {name} {label} ({r['precision']}): engines p50 {eng['p50']:.2f} ms p99 {eng['p99']:.2f} ms; "
                         f"end to end p50 {e2e['p50']:.2f} ms p99 {e2e['p99']:.2f} ms")
        for label, reason in bench.get("unavailable", {}).items():
            lines.append(f"bench {name} {label}: unavailable: {reason}")
    return lines


def run(args: argparse.Namespace) -> int:
    """The check; 0 when every step ran, 1 when one failed, 3 without an NVIDIA GPU (nothing is done)."""
    gpus, why = nvidia_gpus()
    if not gpus:
        print(f"gpu-check: no NVIDIA GPU here ({why}); this check needs one and does nothing without it",
              file=sys.stderr)
        return EXIT_NO_GPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else out / "work"
    model_dir, cache_dir, calib = work / "model", work / "engines", work / "calibration"
    steps = Steps(out, args.budget_s)
    report: dict[str, Any] = {"gpus": gpus, "host": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
                              "config": args.config, "batches": args.batch_sizes, "budget_s": args.budget_s}
    max_batch = str(max(args.batch_sizes))
    try:
        steps.call("calibration_windows", write_calibration, args.config, calib, args.calibration_windows)
        steps.command("export", [*NEOPAIN, "export", "--random", "--config", args.config, "--out", str(model_dir),
                                 "--quiet", "--int8", str(calib), "--int8-windows", str(args.calibration_windows)])
        for precision in ("fp16", "int8"):
            steps.command(f"build_engines_{precision}", [*NEOPAIN, "build-engines", "--model-dir", str(model_dir), "--cache-dir",
                                                         str(cache_dir), "--precision", precision, "--max-batch", max_batch])
        report["parity"] = steps.call("parity", parity, model_dir, cache_dir, args.batch_sizes)
        if report["parity"]["failures"]:
            raise CheckFailed("parity: " + "; ".join(report["parity"]["failures"]))
        report["bench"] = {}
        for b in args.batch_sizes:
            for backend, precisions in (("tensorrt", "fp16,int8"), ("torch", "fp32,fp16")):
                path = out / f"bench_{backend}_batch{b}.json"
                steps.command(f"bench_{backend}_b{b}", [*NEOPAIN, "bench", "--model-dir", str(model_dir), "--backends", backend,
                                                        "--precision", precisions, "--batch", str(b), "--runs", str(args.runs),
                                                        "--cache-dir", str(cache_dir), "--json", str(path)])
                bench = report["bench"][f"{backend}_batch{b}"] = json.loads(path.read_text(encoding="utf-8"))
                if bench.get("unavailable"):  # bench itself goes on without a backend; the check does not
                    raise CheckFailed(f"bench_{backend}_b{b}: " + "; ".join(
                        f"{label} unavailable: {reason}" for label, reason in bench["unavailable"].items()))
        report["verdict"] = "every step ran"
        status = 0
    except CheckFailed as exc:
        report["error"] = str(exc)
        report["verdict"] = "FAILED"
        status = 1
    report["steps"] = steps.rows
    report["elapsed_s"] = steps.elapsed_s
    if steps.elapsed_s > args.budget_s and status == 0:
        report["verdict"] = f"every step ran, but in {steps.elapsed_s:.0f} s, over the {args.budget_s:.0f} s budget"
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    text = "\n".join(summary_lines(report)) + "\n"
    (out / "report.txt").write_text(text, encoding="utf-8")
    print(text + f"report: {out / 'report.json'}, {out / 'report.txt'}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
