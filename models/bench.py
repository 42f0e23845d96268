"""``neopain bench``: latency, throughput and memory of the scoring path on every available backend.

What is measured, and why this way:

* **End to end** = pre-processing of one raw window (:func:`models.features.inputs.model_inputs`: face
  frames at camera size -> resized, normalised clip; raw audio -> log-Mel patches; raw RR/SpO2 -> vitals grid
  + HRV) + the four engines. The pre-processing runs on the CPU whatever the backend, so its share of the
  end-to-end time says whether a faster engine still matters.
* The frames handed to the clip pre-processing have the **camera's full size** (default 1280x720): a
  worst case (a face filling the frame); a real face crop is smaller and resizes faster. Face detection
  itself runs in the camera thread, not in the scoring path, and is not included.
* Per part and end-to-end p50/p95/p99 over ``--runs`` runs after ``--warmup`` runs, throughput
  (windows/s = batch / mean end-to-end), peak memory (RSS high-water mark over the backend's load and
  runs minus RSS before loading; Linux ``/proc/self/clear_refs`` resets the mark per backend; CUDA
  ``max_memory_allocated`` for PyTorch on a GPU).
* Ratios between backends come from the same process and the same inputs (``ratios``), never from runs
  on different days or machines.

Backends that cannot load here are listed with the reason (``unavailable``), not silently dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from models.configs import ModelConfig
from models.features.inputs import RawWindow, model_inputs

DEFAULT_CAMERA = (1280, 720)  # appliance camera.width/height defaults
PERCENTILES = (50, 95, 99)


def stats_ms(samples: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/min/max (ms) of ``samples`` (ms)."""
    values = np.asarray(samples, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no samples to summarise")
    p = np.percentile(values, PERCENTILES)
    return {
        "p50": float(p[0]), "p95": float(p[1]), "p99": float(p[2]),
        "mean": float(values.mean()), "min": float(values.min()), "max": float(values.max()), "n": int(values.size),
    }


def synthetic_raw_window(cfg: ModelConfig, camera: tuple[int, int] = DEFAULT_CAMERA, seed: int = 0) -> RawWindow:
    """A raw window like the window builder's: camera-size uint8 frames, a cry-length 16 kHz segment
    (``max_patches`` patches), 30 s + margin of RR intervals around 140 bpm and 1 Hz SpO2."""
    rng = np.random.default_rng(seed)
    width, height = camera
    frames = rng.integers(0, 256, size=(cfg.video.frames, height, width, 3), dtype=np.uint8)
    seconds = cfg.audio.max_patches * 0.96 + 0.02
    t = np.arange(int(seconds * 16000)) / 16000.0
    audio = (0.3 * np.sin(2 * np.pi * 450.0 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    end_s = 100.0
    span = cfg.vitals.window_s + 5.0
    rr = np.clip(rng.normal(430.0, 15.0, size=int(span / 0.43) + 5), 300.0, 600.0)
    rr_times = end_s - span + np.cumsum(rr) / 1000.0
    rr_times, rr = rr_times[rr_times <= end_s], rr[rr_times <= end_s]
    spo2_times = np.arange(end_s - span, end_s + 1e-9, 1.0)
    spo2 = np.clip(rng.normal(96.0, 1.0, size=spo2_times.size), 85.0, 100.0)
    return RawWindow(
        end_s=end_s, frames=frames, audio=audio, audio_rate=16000, rr_ms=rr, rr_times_s=rr_times,
        spo2_pct=spo2, spo2_times_s=spo2_times, presence={"video": True, "audio": True, "vitals": True},
    )


def _time(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def preprocessing_breakdown(window: RawWindow, cfg: ModelConfig, runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """Each pre-processing step timed alone (ms): clip, log-Mel, vitals grid + HRV, and all of model_inputs."""
    from models.features.audio import log_mel_patches, pad_patches
    from models.features.video import preprocess_clip
    from models.features.vitals import build_vitals_grid, hrv_features

    def vitals() -> None:
        build_vitals_grid(window.rr_ms, window.rr_times_s, window.spo2_pct, window.spo2_times_s, window.end_s, cfg.vitals)
        hrv_features(window.rr_ms[window.rr_times_s > window.end_s - cfg.vitals.window_s]).normalised()

    steps = {
        "video": lambda: preprocess_clip(window.frames, cfg.video),
        "audio": lambda: pad_patches([log_mel_patches(window.audio, window.audio_rate)], cfg.audio.max_patches),
        "vitals": vitals,
        "total": lambda: model_inputs(window, cfg),
    }
    return {name: stats_ms(_time(fn, runs, warmup)) for name, fn in steps.items()}


# ------------------------------------------------------------------------------------------------ memory

def _proc_status_kb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (Linux >= 4.0); False where not permitted/supported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _mb(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024.0, 1)


# ------------------------------------------------------------------------------------------------ bench

def bench_backend(
    model_dir: Path,
    backend: str,
    window: RawWindow,
    cfg: ModelConfig,
    *,
    runs: int,
    warmup: int,
    batch: int,
    threads: int,
    cache_dir: str | None,
    precision: str,
) -> dict[str, Any]:
    """Load ``backend`` and time end-to-end scoring of ``batch`` copies of ``window``."""
    from models.engines.runtime import ScoringEngines, stack_windows

    cuda = None
    try:
        import torch

        if backend == "torch" and torch.cuda.is_available():
            cuda = torch.cuda
            cuda.reset_peak_memory_stats()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    reset = _reset_peak_rss()
    rss_before = _proc_status_kb("VmRSS")
    t0 = time.perf_counter()
    engines = ScoringEngines(model_dir, backend, cache_dir=cache_dir, precision=precision, threads=threads)
    load_s = time.perf_counter() - t0
    rss_loaded = _proc_status_kb("VmRSS")
    parts: dict[str, list[float]] = {name: [] for name in engines.manifest.parts}
    pre, engine, e2e = [], [], []
    try:
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            batch_inputs = stack_windows([model_inputs(window, cfg) for _ in range(batch)])
            t1 = time.perf_counter()
            result = engines.run(batch_inputs)
            if cuda is not None:
                cuda.synchronize()
            t2 = time.perf_counter()
            if i < warmup:
                continue
            pre.append((t1 - t0) * 1e3)
            engine.append((t2 - t1) * 1e3)
            e2e.append((t2 - t0) * 1e3)
            for name in parts:
                parts[name].append(result.timings_ms[name])
        info = {
            "available": True,
            "device": engines.device,
            "precision": engines.precision,
            "providers": engines.providers,
            "load_s": round(load_s, 3),
        }
    finally:
        engines.close()
    e2e_stats = stats_ms(e2e)
    pre_stats = stats_ms(pre)
    info.update(
        parts={name: stats_ms(v) for name, v in parts.items()},
        preprocessing=pre_stats,
        engine=stats_ms(engine),
        end_to_end=e2e_stats,
        throughput_windows_per_s=batch * 1e3 / e2e_stats["mean"],
        preprocessing_share=pre_stats["p50"] / e2e_stats["p50"],
        memory={
            "rss_before_mb": _mb(rss_before),
            "rss_after_load_mb": _mb(rss_loaded),
            "rss_peak_delta_mb": _mb((_proc_status_kb("VmHWM") or 0) - (rss_before or 0)) if rss_before else None,
            "rss_peak_reset": reset,
            "cuda_max_allocated_mb": round(cuda.max_memory_allocated() / 2**20, 1) if cuda is not None else None,
        },
    )
    return info


def ratios(backends: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Speed-up of each backend over the reference (PyTorch eager if measured), same run, p50 based."""
    measured = [b for b, r in backends.items() if r.get("available")]
    if len(measured) < 2:
        return {}
    reference = "torch" if "torch" in measured else measured[0]
    ref = backends[reference]
    out = {}
    for name in measured:
        if name == reference:
            continue
        r = backends[name]
        out[f"{name}_vs_{reference}"] = {
            "engine_p50_speedup": ref["engine"]["p50"] / r["engine"]["p50"],
            "engine_p99_speedup": ref["engine"]["p99"] / r["engine"]["p99"],
            "end_to_end_p50_speedup": ref["end_to_end"]["p50"] / r["end_to_end"]["p50"],
        }
    return out


def benchmark(
    model_dir: str | Path,
    backends: Sequence[str] = ("torch", "onnxruntime", "tensorrt"),
    *,
    runs: int = 20,
    warmup: int = 3,
    batch: int = 1,
    threads: int = 0,
    camera: tuple[int, int] = DEFAULT_CAMERA,
    cache_dir: str | None = None,
    precision: str = "fp16",
) -> dict[str, Any]:
    """The full report (see the module docstring) for the exported model in ``model_dir``."""
    from models.engines.base import BackendUnavailable, EngineError
    from models.manifest import read_manifest

    if runs < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"need runs >= 1, warmup >= 0, batch >= 1; got {runs}, {warmup}, {batch}")
    threads = threads or os.cpu_count() or 1
    import torch

    torch.set_num_threads(threads)
    manifest = read_manifest(model_dir)
    cfg = manifest.model_config()
    window = synthetic_raw_window(cfg, camera)
    report: dict[str, Any] = {
        "model": {"model_version": manifest.model_version, "config": manifest.config_name, "model_dir": str(model_dir)},
        "settings": {"runs": runs, "warmup": warmup, "batch": batch, "threads": threads, "camera": list(camera),
                     "precision": precision},
        "host": _host(),
        "preprocessing": preprocessing_breakdown(window, cfg, runs, min(warmup, 2)),
        "backends": {},
        "unavailable": {},
    }
    for backend in backends:
        try:
            report["backends"][backend] = bench_backend(
                Path(model_dir), backend, window, cfg, runs=runs, warmup=warmup, batch=batch, threads=threads,
                cache_dir=cache_dir, precision=precision,
            )
        except (BackendUnavailable, EngineError) as exc:
            report["unavailable"][backend] = f"{type(exc).__name__}: {exc}"
    report["ratios"] = ratios(report["backends"])
    return report


def _host() -> dict[str, Any]:
    import onnxruntime
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "cuda_gpu": gpu,
    }


def format_report(report: dict[str, Any]) -> str:
    """The human-readable table of a :func:`benchmark` report."""
    s = report["settings"]
    lines = [
        f"model {report['model']['model_version']} ({report['model']['config']}), batch {s['batch']}, "
        f"{s['runs']} runs after {s['warmup']} warm-up, {s['threads']} threads, camera {s['camera'][0]}x{s['camera'][1]}",
        "",
        f"{'backend':12s} {'stage':16s} {'p50 ms':>9s} {'p95 ms':>9s} {'p99 ms':>9s}",
    ]

    def row(backend: str, stage: str, st: dict[str, float]) -> None:
        lines.append(f"{backend:12s} {stage:16s} {st['p50']:9.2f} {st['p95']:9.2f} {st['p99']:9.2f}")

    for step, st in report["preprocessing"].items():
        row("(cpu)", f"pre:{step}", st)
    for name, r in report["backends"].items():
        label = f"{name}"
        for part, st in r["parts"].items():
            row(label, part, st)
        row(label, "engines", r["engine"])
        row(label, "pre-processing", r["preprocessing"])
        row(label, "end-to-end", r["end_to_end"])
        mem = r["memory"]
        extra = f", CUDA max allocated {mem['cuda_max_allocated_mb']} MB" if mem["cuda_max_allocated_mb"] is not None else ""
        lines.append(
            f"{'':12s} {r['device']} {r['precision']} [{', '.join(r['providers'])}]: "
            f"{r['throughput_windows_per_s']:.2f} windows/s, pre-processing {100 * r['preprocessing_share']:.1f} % "
            f"of end-to-end (p50), peak RSS +{mem['rss_peak_delta_mb']} MB{extra}, load {r['load_s']:.2f} s"
        )
    for name, reason in report["unavailable"].items():
        lines.append(f"{name:12s} unavailable: {reason}")
    for pair, r in report["ratios"].items():
        lines.append(
            f"{pair}: engines {r['engine_p50_speedup']:.2f}x (p50), {r['engine_p99_speedup']:.2f}x (p99); "
            f"end-to-end {r['end_to_end_p50_speedup']:.2f}x (p50)"
        )
    return "\n".join(lines)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain bench``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="exported model directory (neopain export)")
    source.add_argument("--random", action="store_true", help="export random weights of --config to a temporary directory first")
    parser.add_argument("--config", choices=["tiny", "full"], default="full", help="with --random: network size (default full)")
    parser.add_argument("--backends", default="torch,onnxruntime,tensorrt", help="comma-separated (default: all three)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per backend (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--batch", type=int, default=1, help="windows per run (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for PyTorch and ONNX Runtime (default: all cores)")
    parser.add_argument("--camera", default=f"{DEFAULT_CAMERA[0]}x{DEFAULT_CAMERA[1]}", help="raw frame size WxH (default 1280x720)")
    parser.add_argument("--cache-dir", help="TensorRT engine cache (neopain build-engines)")
    parser.add_argument("--precision", choices=["fp16", "int8"], default="fp16",
                        help="TensorRT engines to load; PyTorch uses FP16 on CUDA (default fp16)")
    parser.add_argument("--json", help="write the report here (JSON)")


def run_bench(args: argparse.Namespace) -> int:
    """``neopain bench``: prints the table, writes the JSON; 1 when no backend could run."""
    from models.engines.base import EngineError
    from models.engines.runtime import BACKENDS

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        print(f"neopain bench: error: --backends takes a comma-separated subset of {','.join(BACKENDS)}, got {args.backends!r}",
              file=sys.stderr)
        return 1
    try:
        width, height = (int(v) for v in args.camera.lower().split("x"))
    except ValueError:
        print(f"neopain bench: error: --camera must be WIDTHxHEIGHT, got {args.camera!r}", file=sys.stderr)
        return 1
    kwargs = dict(runs=args.runs, warmup=args.warmup, batch=args.batch, threads=args.threads, camera=(width, height),
                  cache_dir=args.cache_dir, precision=args.precision)
    try:
        if args.random:
            import torch

            from models.configs import get_config
            from models.estimator import create_pain_estimator
            from models.export import export_model_dir

            with tempfile.TemporaryDirectory(prefix="neopain-bench-") as tmp:
                torch.manual_seed(0)
                cfg = get_config(args.config)
                export_model_dir(create_pain_estimator(cfg).eval(), cfg, tmp, progress=False)
                report = benchmark(tmp, backends, **kwargs)
                report["model"]["model_dir"] = None
                report["model"]["random"] = True
        else:
            report = benchmark(args.model_dir, backends, **kwargs)
            report["model"]["random"] = False
    except (ValueError, EngineError) as exc:
        print(f"neopain bench: error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"report: {args.json}")
    return 0 if report["backends"] else 1
