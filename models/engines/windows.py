"""INT8 calibration windows on disk: one ``.npz`` per quality-gated window (the format is described in
:mod:`models.engines.build`, which ``neopain build-engines`` and ``neopain export --int8`` both read).

Why its own module: the TensorRT builder and the QDQ quantizer (:mod:`models.quantize`) read the same
files; neither should have to import the other to do so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from models.engines.base import EngineError
from models.manifest import Manifest

CALIBRATION_SUFFIX = ".npz"


def window_specs(manifest: Manifest) -> dict[str, tuple[tuple[int, ...], str]]:
    """(shape without the batch dimension, dtype) of each estimator input, as the manifest records them."""
    from models.estimator import INPUT_NAMES

    specs = {t.name: t for p in manifest.parts.values() for t in p.inputs}
    return {n: (tuple(int(d) for d in specs[n].shape[1:]), specs[n].dtype) for n in INPUT_NAMES}


def write_calibration_window(path: str | Path, inputs: Mapping[str, np.ndarray]) -> Path:
    """Write one calibration window (the arrays of ``model_inputs``, no batch dimension) as ``.npz``."""
    from models.estimator import INPUT_NAMES

    missing = [n for n in INPUT_NAMES if n not in inputs]
    if missing:
        raise ValueError(f"calibration window misses inputs {missing}")
    path = Path(path)
    if path.suffix != CALIBRATION_SUFFIX:
        raise ValueError(f"calibration window files end in {CALIBRATION_SUFFIX}, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{n: np.asarray(inputs[n]) for n in INPUT_NAMES})
    return path


def read_calibration_dir(directory: str | Path, manifest: Manifest, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    """The calibration windows in ``directory``, each checked against the model's input shapes.

    Errors name the file and the key (missing, wrong shape, wrong dtype, not an npz).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EngineError(f"calibration directory {directory} does not exist")
    files = sorted(directory.glob(f"*{CALIBRATION_SUFFIX}"))[:limit]
    if not files:
        raise EngineError(f"calibration directory {directory} holds no {CALIBRATION_SUFFIX} windows")
    specs = window_specs(manifest)
    windows = []
    for path in files:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile/pickle errors of a damaged file
            raise EngineError(f"calibration window {path} cannot be read ({type(exc).__name__}: {exc})") from exc
        for name, (shape, dtype) in specs.items():
            if name not in arrays:
                raise EngineError(f"calibration window {path}: key {name!r} is missing (has {sorted(arrays)})")
            if arrays[name].shape != shape:
                raise EngineError(f"calibration window {path}: key {name!r} has shape {arrays[name].shape}, the model wants {shape}")
            if np.dtype(dtype) == np.bool_ and arrays[name].dtype != np.bool_:
                raise EngineError(f"calibration window {path}: key {name!r} must be bool, got {arrays[name].dtype}")
        windows.append({n: arrays[n].astype(dtype) for n, (_, dtype) in specs.items()})
    return windows
