"""Pick the first backend that loads, in the configured order, and say why the others did not.

Why a fallback order: the same image runs on a Jetson (TensorRT), a GPU workstation and a laptop
(CPU). The appliance config lists backends (``scoring.backends``); the first that loads wins, and every
backend that was skipped is logged with its reason (no TensorRT, no GPU, no engine built yet, a
corrupted file...), so that "why is it slow" is answered by the journal, not by guessing. The CPU
default (ONNX Runtime, then PyTorch) works on any laptop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from models.engines.base import BackendUnavailable, EngineError
from models.engines.runtime import BACKENDS, ScoringEngines

log = logging.getLogger(__name__)

DEFAULT_ORDER = ("tensorrt", "onnxruntime", "torch")


def open_scoring_engines(
    model_dir: str | Path,
    order: Sequence[str] = DEFAULT_ORDER,
    cache_dir: str | Path | None = None,
    precision: str = "fp16",
    **engine_kwargs: object,
) -> ScoringEngines:
    """The first backend of ``order`` that loads the model in ``model_dir``.

    The returned object's ``skipped`` maps each backend tried before it to the reason it was skipped.
    Raises :class:`EngineError` naming every backend and its reason when none loads.
    """
    if not order:
        raise ValueError("backend order is empty; list at least one of " + ", ".join(BACKENDS))
    unknown = [b for b in order if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {BACKENDS}")
    skipped: dict[str, str] = {}
    for backend in order:
        try:
            engines = ScoringEngines(model_dir, backend, cache_dir=cache_dir, precision=precision, **engine_kwargs)  # type: ignore[arg-type]
        except BackendUnavailable as exc:
            skipped[backend] = f"unavailable: {exc}"
            log.warning("engine backend %s unavailable: %s", backend, exc)
            continue
        except EngineError as exc:
            skipped[backend] = f"failed to load: {exc}"
            log.error("engine backend %s failed to load: %s", backend, exc)
            continue
        engines.skipped = skipped  # type: ignore[attr-defined]
        log.info("engines: %s", engines.describe())
        return engines
    reasons = "; ".join(f"{b}: {r}" for b, r in skipped.items())
    raise EngineError(f"no engine backend could load {model_dir} ({reasons})")
