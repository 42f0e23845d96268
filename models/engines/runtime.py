"""ScoringEngines: the four parts of an exported model, loaded with one backend and run in sequence.

Why one object for the four engines: the pipeline wants "window in, score out" and must not know how
many networks there are or which backend runs them. The model directory's manifest
(:mod:`models.manifest`) says which files make the model, their checksums, their tensor names and
shapes; the backends only differ in how a part is loaded:

* ``onnxruntime``: the ONNX file (CPU provider; CUDA when this onnxruntime build has it); at ``int8`` the
  QDQ parts of ``neopain export --int8`` (a model without them runs FP32, logged);
* ``torch``: ``estimator.pt`` rebuilt and split with :func:`models.graphs.split_estimator` (FP16 on CUDA);
* ``tensorrt``: the plan built by ``neopain build-engines`` for this GPU/TensorRT/precision/ONNX hash
  from the engine cache (at ``int8`` built from the QDQ part where the model has one); a missing or
  foreign plan is an error that says to rebuild.

Precision (``[scoring] precision``): ``fp32`` everywhere; ``fp16`` (the default) = TensorRT FP16, PyTorch
FP16 on CUDA, ONNX Runtime FP32 (its CPU kernels have no fast FP16); ``int8`` = TensorRT INT8, ONNX
Runtime on the QDQ parts, PyTorch as at ``fp16`` (it has no INT8 path here). :attr:`ScoringEngines.precision`
says what actually runs.

Every part is fed by name from the model inputs and the earlier parts' outputs, so the order of
arguments in a file can never silently swap two tensors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from models.engines.base import BackendUnavailable, Engine, EngineError
from models.manifest import ESTIMATOR_NAME, Manifest, check_preprocessing, read_manifest, verify_int8_part, verify_part

log = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
ORT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class ScoringResult:
    """The estimator's outputs for one batch and how long each part took (ms, wall clock)."""

    nips: np.ndarray  # (B,) in [0, 7]
    item_logits: np.ndarray  # (B, 13)
    modality_weights: np.ndarray  # (B, 3) video / audio / vitals
    timings_ms: dict[str, float]  # per part, plus "total"

    @property
    def outputs(self) -> dict[str, np.ndarray]:
        return {"nips": self.nips, "item_logits": self.item_logits, "modality_weights": self.modality_weights}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


def stack_windows(windows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batch the per-window arrays of :func:`models.features.inputs.model_inputs` (adds dim 0)."""
    if not windows:
        raise ValueError("stack_windows needs at least one window")
    names = list(windows[0])
    for i, w in enumerate(windows):
        if list(w) != names:
            raise ValueError(f"window {i} has inputs {list(w)}, window 0 has {names}")
    return {n: np.stack([np.asarray(w[n]) for w in windows]) for n in names}


class ScoringEngines:
    """The model in ``model_dir`` loaded with ``backend``; :meth:`run` scores a batch of windows.

    Raises :class:`BackendUnavailable` when the backend's library or hardware is missing here and
    :class:`EngineError` (incl. ``ManifestError``/``EngineCacheError``) when the model files are bad.
    """

    def __init__(
        self,
        model_dir: str | Path,
        backend: str,
        *,
        cache_dir: str | Path | None = None,
        precision: str = "fp16",
        device: str | None = None,
        threads: int = 0,
        ort_providers: Sequence[str] = ORT_PROVIDERS,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model_dir = Path(model_dir)
        self.backend = backend
        self.manifest: Manifest = read_manifest(self.model_dir)
        check_preprocessing(self.manifest)
        self.model_version = self.manifest.model_version
        self.config = self.manifest.model_config()
        self.precision = "fp32"
        self.device = "cpu"
        self.providers: list[str] = []
        self.quantized_parts: list[str] = []  # parts running a QDQ graph
        self.engines: dict[str, Engine] = {}
        try:
            if backend == "onnxruntime":
                self._load_onnxruntime(ort_providers, threads, precision)
            elif backend == "torch":
                self._load_torch(precision, device, threads)
            else:
                self._load_tensorrt(precision, cache_dir)
        except BaseException:
            self.close()
            raise
        self._specs = {t.name: t for p in self.manifest.parts.values() for t in p.inputs}

    # ------------------------------------------------------------------------------------------- loading

    def _load_onnxruntime(self, providers: Sequence[str], threads: int, precision: str) -> None:
        from models.engines.onnxruntime import OnnxRuntimeEngine

        int8 = precision == "int8"
        if int8 and self.manifest.int8 is None:
            log.warning("%s has no INT8 (QDQ) parts: running FP32 on ONNX Runtime; export them with "
                        "`neopain export --int8 CALIB_DIR`", self.model_dir)
            int8 = False
        quantized = []
        for name in self.manifest.parts:
            qdq = verify_int8_part(self.model_dir, self.manifest, name) if int8 else None
            if int8 and qdq is None:
                log.info("ONNX Runtime INT8: part %s has no QDQ graph (%s); it runs FP32", name,
                         self.manifest.int8.parts.get(name).reason if name in self.manifest.int8.parts else "not listed")  # type: ignore[union-attr]
            path = qdq or verify_part(self.model_dir, self.manifest, name)
            self.engines[name] = OnnxRuntimeEngine(path, providers=providers, intra_op_threads=threads, qdq=qdq is not None)
            if qdq is not None:
                quantized.append(name)
        first = next(iter(self.engines.values()))
        self.providers = list(first.providers)  # type: ignore[attr-defined]
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        self.precision = "int8" if quantized else "fp32"
        self.quantized_parts = quantized

    def _load_torch(self, precision: str, device: str | None, threads: int) -> None:
        import torch

        from models.engines.torch import TorchEngine
        from models.export import ExportError, load_estimator_checkpoint
        from models.graphs import split_estimator

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        half = precision in ("fp16", "int8") and device.startswith("cuda")
        if threads:
            torch.set_num_threads(threads)
        try:
            model, cfg = load_estimator_checkpoint(self.model_dir / ESTIMATOR_NAME)
        except ExportError as exc:
            raise EngineError(str(exc)) from exc
        stored = torch.load(self.model_dir / ESTIMATOR_NAME, map_location="cpu", weights_only=True).get("model_version")
        if stored != self.manifest.model_version:
            raise EngineError(
                f"{self.model_dir / ESTIMATOR_NAME} holds model {stored!r} but the manifest says "
                f"{self.manifest.model_version!r}; re-export the model directory"
            )
        for name, part in split_estimator(model).items():
            self.engines[name] = TorchEngine(part.module, part.input_names, part.output_names, device=device, half=half)
        self.precision = "fp16" if half else "fp32"
        self.device = device
        self.providers = [f"torch {torch.__version__} {device} {self.precision}"]

    def _load_tensorrt(self, precision: str, cache_dir: str | Path | None) -> None:
        from models.engines.cache import EngineCache
        from models.engines.tensorrt import TensorRTEngine, tensorrt_available

        ok, reason = tensorrt_available()
        if not ok:
            raise BackendUnavailable(reason)
        if cache_dir is None:
            raise EngineError("the tensorrt backend needs the engine cache directory (scoring.engine_cache_dir)")
        if precision == "fp32" or precision == "fp16" or self.manifest.int8 is None:
            sources = {name: verify_part(self.model_dir, self.manifest, name) for name in self.manifest.parts}
        else:  # the plan build-engines made from the part's QDQ graph, or from the FP32 one with a calibrator
            sources = {name: verify_int8_part(self.model_dir, self.manifest, name)
                       or verify_part(self.model_dir, self.manifest, name) for name in self.manifest.parts}
        cache = EngineCache(cache_dir)
        for name, path in sources.items():
            self.engines[name] = TensorRTEngine.from_cache(name, path, precision, cache)
        self.precision = precision
        self.device = "cuda"
        self.providers = [reason]

    # ------------------------------------------------------------------------------------------- running

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Validate names and shapes of a batch against the manifest; returns the batch size."""
        from models.estimator import INPUT_NAMES

        missing = [n for n in INPUT_NAMES if n not in inputs]
        extra = [n for n in inputs if n not in INPUT_NAMES]
        if missing or extra:
            raise EngineError(f"scoring inputs: missing {missing or 'none'}, unexpected {extra or 'none'}; expected {list(INPUT_NAMES)}")
        batch = None
        for name in INPUT_NAMES:
            array = np.asarray(inputs[name])
            want = self._specs[name].shape
            if array.ndim != len(want) or tuple(array.shape[1:]) != tuple(want[1:]):
                raise EngineError(
                    f"scoring input {name!r} has shape {array.shape}, expected (batch, {', '.join(map(str, want[1:]))})"
                    " (add the batch dimension with stack_windows)"
                )
            if batch is None:
                batch = array.shape[0]
            elif array.shape[0] != batch:
                raise EngineError(f"scoring input {name!r} has batch {array.shape[0]}, other inputs {batch}")
        if not batch:
            raise EngineError("scoring inputs have batch size 0")
        return batch

    def run(self, inputs: Mapping[str, np.ndarray]) -> ScoringResult:
        """Score one batch (every input with a leading batch dimension)."""
        values, timings = self.run_values(inputs)
        return ScoringResult(
            nips=np.asarray(values["nips"], dtype=np.float32),
            item_logits=np.asarray(values["item_logits"], dtype=np.float32),
            modality_weights=np.asarray(values["modality_weights"], dtype=np.float32),
            timings_ms=timings,
        )

    def run_values(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Every tensor of a run by name (model inputs, tokens, outputs) and the per-part timings (ms).

        The intermediate tokens are what the fusion head's INT8 calibration needs.
        """
        self.check_inputs(inputs)
        values: dict[str, np.ndarray] = dict(inputs)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        for name, engine in self.engines.items():
            part = self.manifest.parts[name]
            t0 = time.perf_counter()
            outputs = engine.run({n: values[n] for n in part.input_names})
            timings[name] = (time.perf_counter() - t0) * 1e3
            for n in part.output_names:
                if n not in outputs:
                    raise EngineError(f"{self.backend} part {name} returned {list(outputs)}, manifest expects output {n!r}")
                values[n] = outputs[n]
        timings["total"] = (time.perf_counter() - start) * 1e3
        return values, timings

    def describe(self) -> str:
        return f"{self.model_version} on {self.backend} ({', '.join(self.providers)})"

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines = {}

    def __enter__(self) -> "ScoringEngines":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
