"""ONNX Runtime backend: the CPU default on a laptop or in CI, and CUDA / TensorRT providers when present.

INT8: a QDQ part (``qdq=True``, :mod:`models.quantize`) opened on the CPU provider is rewritten in memory for
ONNX Runtime's x86 integer kernels (:mod:`models.engines.ort_int8`); on this project's CPUs those are the
AVX-512 VNNI U8S8 GEMMs (``vpdpbusds``), and the float video stem runs as a 2-D NCHWc convolution
(:mod:`models.engines.ort_stem`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from models.engines.base import BackendUnavailable, Engine, EngineError

# Preference order; only those this onnxruntime build offers are used.
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
# Graph optimisations turned off for the CPU view of a QDQ part. QDQPropagationTransformer moves each
# quantization up through the max-pool after a float stem, which turns MLAS's blocked float pool (fused
# with the stem convolution) into a generic uint8 pool in NCHW, 5x slower; the pools that should run on
# uint8 already do after the rewrite (models.engines.ort_int8.pools_on_uint8). Measured on the full model,
# one thread, same process: INT8 video encoder 464 -> 366 ms, audio encoder 46 -> 34 ms of CPU time.
QDQ_CPU_DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        qdq: bool = False,
        optimized_model_path: str | Path | None = None,
    ) -> None:
        """``optimized_model_path``: where ONNX Runtime writes the graph it runs after its optimisations (which
        kernels run: ``neopain bench`` reports them); None in service."""
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
        # Each part has its own intra-op thread pool, and by default its threads keep spinning for a while after
        # a run returns: the next part's pool, and the next window's pre-processing, then compete with spinners
        # for the same two cores. The daemon scores every few seconds, so spinning past the end of a run only
        # burns CPU; within a run the pool still spins between operators.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        if optimized_model_path is not None:
            options.optimized_model_filepath = str(optimized_model_path)
            options.log_severity_level = 3  # not the warning that such a file fits this CPU only: that is the point
        self.path = path
        self.qdq = qdq
        self.rewrites: dict[str, int] = {}
        try:
            source: str | bytes = str(path)
            disabled: list[str] | None = None
            if qdq and chosen[0] == "CPUExecutionProvider":
                from models.engines.ort_int8 import cpu_int8_model_bytes

                source, self.rewrites = cpu_int8_model_bytes(path)
                disabled = list(QDQ_CPU_DISABLED_OPTIMIZERS)
            self.session = ort.InferenceSession(source, sess_options=options, providers=chosen,
                                                disabled_optimizers=disabled)
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


def kernel_census(onnx_path: str | Path, qdq: bool = False) -> dict[str, int]:
    """How many nodes of each kind ONNX Runtime's CPU provider runs for this part after its graph optimisations
    (``domain:op``, e.g. ``com.microsoft:QLinearConv``: the integer convolutions on MLAS's U8S8 GEMMs, which
    use AVX-512 VNNI where the CPU has it; ``com.microsoft.nchwc:Conv``: MLAS's blocked float convolutions).

    Why: which kernels run decides the speed, and an optimisation that silently stops applying (a new ONNX
    Runtime, a changed graph) shows here as float ``Conv``/``DequantizeLinear`` nodes where there were none.
    """
    import tempfile
    from collections import Counter

    import onnx

    with tempfile.TemporaryDirectory(prefix="neopain-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        OnnxRuntimeEngine(onnx_path, qdq=qdq, intra_op_threads=1, optimized_model_path=optimized).close()
        graph = onnx.load(str(optimized), load_external_data=False).graph
    census = Counter(f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in graph.node)
    return dict(sorted(census.items(), key=lambda kv: (-kv[1], kv[0])))


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
