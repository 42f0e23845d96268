"""ONNX Runtime backend: the CPU default on a laptop or in CI, and CUDA / TensorRT providers when present.

INT8: a QDQ part (``qdq=True``, :mod:`models.quantize`) opened on the CPU provider is rewritten in memory for
ONNX Runtime's x86 integer kernels (:mod:`models.engines.ort_int8`); on this project's CPUs those are the
AVX-512 VNNI U8S8 GEMMs (``vpdpbusds``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from models.engines.base import BackendUnavailable, Engine, EngineError

# Preference order; only those this onnxruntime build offers are used.
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        qdq: bool = False,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of the CPU install
            raise BackendUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        path = Path(onnx_path)
        if not path.is_file():
            raise EngineError(f"ONNX file {path} does not exist (run `neopain export` first)")
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available]
        if not chosen:
            raise BackendUnavailable(
                f"none of the ONNX Runtime providers {list(providers)} is available here (have {sorted(available)})"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        self.qdq = qdq
        self.rewrites: dict[str, int] = {}
        try:
            source: str | bytes = str(path)
            if qdq and chosen[0] == "CPUExecutionProvider":
                from models.engines.ort_int8 import cpu_int8_model_bytes

                source, self.rewrites = cpu_int8_model_bytes(path)
            self.session = ort.InferenceSession(source, sess_options=options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EngineError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.providers = self.session.get_providers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feed = {name: _as_onnx_type(inputs[name], self._input_types[name]) for name in self.input_names}
        try:
            outputs = self.session.run(self.output_names, feed)
        except Exception as exc:
            raise EngineError(f"ONNX Runtime run failed: {exc}") from exc
        return dict(zip(self.output_names, outputs))


def _as_onnx_type(array: np.ndarray, onnx_type: str) -> np.ndarray:
    """Cast to the graph's declared element type (e.g. masks given as bool or float)."""
    wanted = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(bool)": np.bool_,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
    }.get(onnx_type)
    array = np.asarray(array)
    if wanted is not None and array.dtype != wanted:
        array = array.astype(wanted)
    return np.ascontiguousarray(array)
