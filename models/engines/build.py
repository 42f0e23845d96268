"""``neopain build-engines``: TensorRT plans of the four parts into the engine cache, and the INT8 calibration set.

Why a separate oneshot step (systemd ``neopain-engines.service``): a TensorRT build takes minutes on a
Jetson and is tied to the GPU and TensorRT version, so it runs on the device, before the daemon, and
its plans are cached under their full validity key (:mod:`models.engines.cache`): an unchanged device
never rebuilds.

INT8 calibration windows — the format ``neopain calibrate capture-int8`` writes and ``--calibration``
reads: a directory of ``*.npz`` files, **one file per window**, holding the six arrays that
:func:`models.features.inputs.model_inputs` returns, under their estimator input names and **without a
batch dimension**:

=================  ==================================  =======
key                shape                               dtype
=================  ==================================  =======
``clip``           (3, frames, crop, crop)             float32
``audio_patches``  (max_patches, 96, 64)               float32
``audio_pad_mask`` (max_patches,)                      bool
``vitals_series``  (4, samples)                        float32
``hrv``            (3,)                                float32
``presence``       (3,)                                float32
=================  ==================================  =======

They are model inputs, not raw sensor data: calibration must see exactly the pre-processed
distribution the engine will see, and these files hold no face images at full resolution or audio that
could be replayed (only the normalised face crop at network size is kept). Files are read in name
order. The fusion head is calibrated on the tokens the (ONNX Runtime) encoders produce for the same
windows. A dataset (docs/dataset.md layout) can be used instead with ``--calibration-dataset``.

INT8 engines are built from the QDQ parts of ``neopain export --int8`` (explicit quantization: those
windows already calibrated them once, for every backend); the windows given here are only needed for a
part without a QDQ graph, which TensorRT then calibrates implicitly (logged with the reason).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from models.engines.base import BackendUnavailable, EngineError
from models.engines.tensorrt import DEFAULT_MAX_BATCH
from models.engines.windows import CALIBRATION_SUFFIX, read_calibration_dir, window_specs, write_calibration_window
from models.manifest import Manifest, read_manifest, verify_part

log = logging.getLogger(__name__)

EXIT_UNAVAILABLE = 3  # TensorRT or a GPU is missing here (the daemon falls back to ONNX Runtime)
__all__ = ["CALIBRATION_SUFFIX", "EXIT_UNAVAILABLE", "build_engines", "calibration_from_dataset", "int8_sources",
           "part_calibration_batches", "read_calibration_dir", "run_build_engines", "window_specs",
           "write_calibration_window"]


def calibration_from_dataset(dataset: str | Path, manifest: Manifest, limit: int = 64) -> list[dict[str, np.ndarray]]:
    """Calibration windows pre-processed from a dataset in the neopain layout (first ``limit`` windows)."""
    from itertools import islice

    from models.data.loader import iter_windows
    from models.samples import samples_from_windows

    cfg = manifest.model_config()
    windows = list(islice(iter_windows(dataset, num_frames=cfg.video.frames, vitals_window_s=cfg.vitals.window_s), limit))
    if not windows:
        raise EngineError(f"dataset {dataset} has no windows to calibrate with")
    inputs = samples_from_windows(windows, cfg, progress=False).inputs
    return [{n: t[i].numpy() for n, t in inputs.items()} for i in range(len(windows))]


def part_calibration_batches(
    model_dir: str | Path, windows: Sequence[Mapping[str, np.ndarray]], batch_size: int = 1
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per part, the calibration batches by input name: encoders get the windows' own arrays, the fusion
    head the tokens the ONNX encoders compute for them (ONNX Runtime on the CPU)."""
    from models.engines.runtime import ScoringEngines, stack_windows

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: dict[str, list[dict[str, np.ndarray]]] = {}
    with ScoringEngines(model_dir, "onnxruntime", ort_providers=("CPUExecutionProvider",)) as engines:
        for start in range(0, len(windows), batch_size):
            values, _ = engines.run_values(stack_windows(list(windows[start : start + batch_size])))
            for name, part in engines.manifest.parts.items():
                batches.setdefault(name, []).append({n: values[n] for n in part.input_names})
    return batches


def build_engines(
    model_dir: str | Path,
    cache_dir: str | Path,
    precision: str = "fp16",
    *,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    force: bool = False,
) -> list[tuple[str, Path, bool]]:
    """Build (or find valid in the cache) a TensorRT plan per part; returns (part, path, built) rows.

    Raises :class:`BackendUnavailable` without TensorRT/GPU, :class:`EngineError` for a bad model dir,
    missing INT8 calibration windows for a part without a QDQ graph, or a failed build. Implicit INT8
    calibrates at batch 1 (the profile's opt shape, which TensorRT 10 calibrates at).
    """
    from tqdm import tqdm

    from models.engines.cache import EngineCache
    from models.engines.tensorrt import build_cached, tensorrt_available, timing_cache_path

    ok, reason = tensorrt_available()
    if not ok:
        raise BackendUnavailable(reason)
    manifest = read_manifest(model_dir)
    paths = {name: verify_part(model_dir, manifest, name) for name in manifest.parts}
    explicit = {name: False for name in manifest.parts}
    per_part: dict[str, list[dict[str, np.ndarray]]] = {}
    if precision == "int8":
        implicit = int8_sources(model_dir, manifest, paths, explicit)
        if implicit:
            if not calibration:
                raise EngineError(
                    f"INT8 parts without a QDQ graph ({'; '.join(f'{n}: {r}' for n, r in implicit.items())}) need "
                    "calibration windows: --calibration DIR (neopain calibrate capture-int8) or --calibration-dataset "
                    "DIR; or export the QDQ parts with `neopain export --int8 CALIB_DIR`")
            per_part = part_calibration_batches(model_dir, calibration, batch_size=1)
    cache = EngineCache(cache_dir)
    cache.directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in tqdm(list(manifest.parts), desc=f"TensorRT {precision}", unit="part"):
        kwargs = {"max_batch": max_batch, "timing_cache": timing_cache_path(cache.directory), "explicit": explicit[name]}
        if precision == "int8" and not explicit[name]:
            kwargs["calibration_batches"] = per_part[name]
            kwargs["calibration_cache"] = cache.directory / f"{name}.{manifest.model_version}.int8.calib"
        path, built = build_cached(name, paths[name], precision, cache, force=force, **kwargs)
        log.info("%s: %s %s", name, "built" if built else "valid in cache", path)
        rows.append((name, path, built))
    return rows


def int8_sources(model_dir: str | Path, manifest: Manifest, paths: dict[str, Path], explicit: dict[str, bool]) -> dict[str, str]:
    """Point ``paths`` at each part's QDQ graph where it has one (``explicit[part] = True``).

    Returns the parts left to TensorRT's implicit calibrator, each with the reason (logged).
    """
    from models.manifest import verify_int8_part

    implicit: dict[str, str] = {}
    for name in manifest.parts:
        qdq = verify_int8_part(model_dir, manifest, name)
        if qdq is not None:
            paths[name], explicit[name] = qdq, True
            continue
        if manifest.int8 is None:
            implicit[name] = "the model has no QDQ parts (exported without --int8)"
        else:
            part = manifest.int8.parts.get(name)
            implicit[name] = f"no QDQ graph: {part.reason if part else 'not in the INT8 build'}"
        log.warning("TensorRT INT8 %s: implicit calibration (deprecated since TensorRT 10.1), because %s", name, implicit[name])
    return implicit


def add_build_engines_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain build-engines``."""
    parser.add_argument("--model-dir", help="exported model directory")
    parser.add_argument("--cache-dir", help="engine cache directory")
    parser.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                        help="default: fp16 (with --config: [scoring] precision); int8 builds from the QDQ parts of "
                        "`neopain export --int8`")
    parser.add_argument("--calibration", help="INT8, parts without a QDQ graph only: directory of .npz calibration "
                        "windows (neopain calibrate capture-int8)")
    parser.add_argument("--calibration-dataset", help="INT8: dataset directory to calibrate with instead")
    parser.add_argument("--calibration-windows", type=int, default=64, help="INT8: windows to use at most (default 64)")
    parser.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                        help=f"largest batch of the optimisation profile (default {DEFAULT_MAX_BATCH})")
    parser.add_argument("--force", action="store_true", help="rebuild even when a valid engine is cached")


def run_build_engines(args: argparse.Namespace) -> int:
    """``neopain build-engines``: 0 built/valid, 1 bad input or failed build, 3 TensorRT/GPU unavailable."""
    model_dir, cache_dir = args.model_dir, args.cache_dir
    args.precision = args.precision or "fp16"
    try:
        if not model_dir or not cache_dir:
            raise EngineError("give --model-dir and --cache-dir")
        calibration = None
        if args.precision == "int8":
            manifest = read_manifest(model_dir)
            if manifest.int8 is not None and all(p.onnx for p in manifest.int8.parts.values()):
                pass  # every part has its QDQ graph: no calibration windows needed
            elif args.calibration:
                calibration = read_calibration_dir(args.calibration, manifest, limit=args.calibration_windows)
            elif args.calibration_dataset:
                calibration = calibration_from_dataset(args.calibration_dataset, manifest, limit=args.calibration_windows)
        rows = build_engines(model_dir, cache_dir, args.precision, calibration=calibration,
                             max_batch=args.max_batch, force=args.force)
    except BackendUnavailable as exc:
        print(f"neopain build-engines: TensorRT engines cannot be built here: {exc}. The appliance will use the "
              "next backend in scoring.backends (ONNX Runtime / PyTorch).", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except EngineError as exc:
        print(f"neopain build-engines: error: {exc}", file=sys.stderr)
        return 1
    for name, path, built in rows:
        print(f"{name:15s} {'built' if built else 'cached'}  {path}")
    return 0
