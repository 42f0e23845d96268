"""TensorRT 10 backend: build FP16/INT8 engines from ONNX on the device, cache them, run them.

Built through the Python builder API with an ``OnnxParser``. INT8 is **explicit quantization**, the path
TensorRT 10 recommends: the part's QDQ graph from ``neopain export --int8`` (:mod:`models.quantize`, the
same graph ONNX Runtime runs on the CPU) carries every scale, so no calibrator runs; the builder gets the
INT8 and FP16 flags (TensorRT 10's weakly typed mode: the Q/DQ nodes pin what runs in INT8, the layers
between them may run FP16). TensorRT 11 removed those flags: there the network is created strongly typed
and the layers outside Q/DQ run in their ONNX type (FP32). The implicit entropy calibrator (deprecated since
TensorRT 10.1, gone in 11) is used only for a part that has no QDQ graph — a model exported without
``--int8``, or a part the quantizer could not handle — and the reason is logged. FP16 is unchanged. A
timing cache shortens rebuilds. Plans are stored in :mod:`models.engines.cache` under their full validity key.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from models.engines.base import BackendUnavailable, Engine, EngineError
from models.engines.cache import EngineCache, EngineCacheError, EngineKey, sha256_file

log = logging.getLogger(__name__)

#: The largest batch of an engine's optimisation profile unless ``neopain build-engines --max-batch`` says
#: otherwise (the daemon scores batch 1; benches and tools batch more).
DEFAULT_MAX_BATCH = 4


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable("TensorRT is not installed (pip install .[jetson] on the GPU device)") from exc
    return trt


def tensorrt_available() -> tuple[bool, str]:
    """Whether TensorRT and a CUDA GPU are usable here, and why not."""
    try:
        _trt()
        from models.engines.cuda_buffers import gpu_identity

        name, _ = gpu_identity()
    except BackendUnavailable as exc:
        return False, str(exc)
    return True, f"TensorRT on {name}"


def engine_key(model: str, onnx_path: str | Path, precision: str) -> EngineKey:
    """The cache key of ``onnx_path`` built at ``precision`` on this GPU with this TensorRT."""
    from models.engines.cuda_buffers import gpu_identity

    trt = _trt()
    gpu_name, sm_count = gpu_identity()
    return EngineKey(model, gpu_name, sm_count, trt.__version__, precision, sha256_file(onnx_path))


class _EntropyCalibrator:
    """IInt8EntropyCalibrator2 over batches of real windows, with a calibration cache file."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        trt = _trt()
        from models.engines.cuda_buffers import DeviceBuffers

        class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self, batches: Sequence[Mapping[str, np.ndarray]], cache_file: Path) -> None:
                super().__init__()
                self.batches = list(batches)
                self.cache_file = cache_file
                self.index = 0
                self.buffers = DeviceBuffers()

            def get_batch_size(self) -> int:
                first = self.batches[0] if self.batches else {}
                return int(next(iter(first.values())).shape[0]) if first else 1

            def get_batch(self, names: list[str]) -> list[int] | None:
                if self.index >= len(self.batches):
                    return None
                batch = self.batches[self.index]
                self.index += 1
                pointers = []
                with self.buffers.active():
                    for name in names:
                        # Keep each input's own dtype (the audio masks are bool); only doubles become fp32.
                        array = np.asarray(batch[name])
                        array = np.ascontiguousarray(array, dtype=np.float32 if array.dtype == np.float64
                                                     else array.dtype)
                        pointers.append(self.buffers.allocate(name, array.shape, array.dtype))
                        self.buffers.to_device(name, array)
                    self.buffers.synchronize()
                return pointers

            def read_calibration_cache(self) -> bytes | None:
                return self.cache_file.read_bytes() if self.cache_file.is_file() else None

            def write_calibration_cache(self, cache: Any) -> None:
                self.cache_file.write_bytes(bytes(cache))

        return EntropyCalibrator(*args, **kwargs)


def weakly_typed(trt: Any) -> bool:
    """TensorRT < 11: precision comes from builder flags (FP16/INT8); 11 removed them (strong typing only)."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def count_qdq_layers(network: Any, trt: Any) -> int:
    """Quantize/Dequantize layers of a parsed network: > 0 means explicit quantization."""
    kinds = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return sum(1 for i in range(network.num_layers) if network.get_layer(i).type in kinds)


def build_plan(
    onnx_path: str | Path,
    precision: str,
    *,
    explicit: bool = False,
    max_batch: int = DEFAULT_MAX_BATCH,
    calibration_batches: Iterable[Mapping[str, np.ndarray]] | None = None,
    calibration_cache: str | Path | None = None,
    timing_cache: str | Path | None = None,
    workspace_bytes: int = 1 << 30,
) -> bytes:
    """Parse ``onnx_path`` and build a serialized plan at ``precision`` (fp32 | fp16 | int8).

    ``explicit`` (int8 only): ``onnx_path`` is a QDQ graph; its scales are used as they are, no calibrator.
    Otherwise int8 calibrates implicitly on ``calibration_batches``.
    """
    trt = _trt()
    weak = weakly_typed(trt)
    if not weak and precision == "fp16":
        raise EngineError(f"TensorRT {trt.__version__} builds strongly typed networks only (the FP16 builder flag was "
                          "removed in 11): FP16 engines need TensorRT 10.x (JetPack 6)")
    if not weak and precision == "int8" and not explicit:
        raise EngineError(f"TensorRT {trt.__version__} has no INT8 calibrator (removed in 11): {onnx_path} needs a "
                          "QDQ graph (`neopain export --int8`) or TensorRT 10.x")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0  # TensorRT 10: explicit batch is the only mode
    if precision == "int8" and explicit and not weak:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT cannot parse {onnx_path}: {errors}")
    if explicit and count_qdq_layers(network, trt) == 0:
        raise EngineError(f"{onnx_path} has no Quantize/Dequantize layers; it is not a QDQ graph")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if weak and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8" and explicit:
        if weak:
            config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ layers present: explicit quantization, no calibrator
    elif precision == "int8":
        batches = list(calibration_batches or [])
        if not batches:
            raise EngineError("INT8 needs calibration windows (neopain calibrate capture-int8, or a dataset)")
        config.set_flag(trt.BuilderFlag.INT8)
        cache_path = Path(calibration_cache or Path(onnx_path).with_suffix(".int8.calib"))
        config.int8_calibrator = _EntropyCalibrator(batches, cache_path)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        fixed = shape[1:]
        profile.set_shape(tensor.name, (1, *fixed), (1, *fixed), (max_batch, *fixed))
    config.add_optimization_profile(profile)
    if precision == "int8" and not explicit:
        config.set_calibration_profile(profile)
    if timing_cache is not None:
        _use_timing_cache(config, Path(timing_cache))
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build a {precision} engine from {onnx_path} (see the log above)")
    if timing_cache is not None:
        used = config.get_timing_cache()  # None when TensorRT took no cache
        if used is not None:
            Path(timing_cache).write_bytes(bytes(used.serialize()))
    return bytes(serialized)


def timing_cache_path(directory: str | Path) -> Path:
    """The timing cache file for this TensorRT version and GPU in ``directory``: a cache is only valid for the
    exact TensorRT version and device that wrote it, so each gets its own file (a JetPack upgrade starts a new
    one instead of failing on the old)."""
    from models.engines.cuda_buffers import gpu_identity

    name, sm_count = gpu_identity()
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()
    return Path(directory) / f"timing.trt{_trt().__version__}.{slug}-{sm_count}sm.cache"


def _use_timing_cache(config: Any, path: Path) -> None:
    """Give ``config`` the timing cache in ``path``; an unreadable or foreign one is replaced by an empty cache
    (it only shortens builds), with a warning."""
    blob = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(blob)
        accepted = bool(config.set_timing_cache(cache, ignore_mismatch=False))
    except Exception as exc:  # TensorRT raises its own error types for a blob it cannot read
        log.warning("TensorRT timing cache %s unusable (%s): starting an empty one", path, exc)
        accepted = False
    if not accepted:
        if blob:
            log.warning("TensorRT timing cache %s was written for another device or version: starting an empty one",
                        path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def build_cached(
    model: str, onnx_path: str | Path, precision: str, cache: EngineCache, *, force: bool = False, **build_kwargs: Any
) -> tuple[Path, bool]:
    """Build into the cache unless a valid engine for this exact key, taking batches of ``max_batch``, is there.
    Returns (path, built)."""
    key = engine_key(model, onnx_path, precision)
    max_batch = int(build_kwargs.get("max_batch", DEFAULT_MAX_BATCH))
    if not force and cache.has_valid(key, max_batch=max_batch):
        return cache.path_for(key), False
    plan = build_plan(onnx_path, precision, **build_kwargs)
    return cache.store(key, plan, max_batch=max_batch), True


class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, plan: bytes) -> None:
        trt = _trt()
        from models.engines.cuda_buffers import DeviceBuffers

        self.trt = trt
        self.buffers = DeviceBuffers()
        with self.buffers.active():  # the engine lives in the buffers' CUDA context, whichever thread runs it
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise EngineError("TensorRT could not deserialize the engine (corrupt or built by another version)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    @classmethod
    def from_cache(cls, model: str, onnx_path: str | Path, precision: str, cache: EngineCache) -> "TensorRTEngine":
        key = engine_key(model, onnx_path, precision)
        return cls(cache.load(key))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on the calling thread: the daemon loads engines in its main thread and scores in another, so the
        CUDA context is made current here for the call (:meth:`DeviceBuffers.active`)."""
        self.check_inputs(inputs)
        with self.buffers.active():
            return self._run(inputs)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name in self.input_names:
            dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
            array = np.ascontiguousarray(inputs[name], dtype=dtype)
            if not self.context.set_input_shape(name, array.shape):
                low, _, high = self.engine.get_tensor_profile_shape(name, 0)
                raise EngineError(f"{name}: shape {array.shape} is outside the engine's profile {tuple(low)} .. "
                                  f"{tuple(high)}; rebuild with `neopain build-engines --max-batch N`")
            self.context.set_tensor_address(name, self.buffers.allocate(name, array.shape, array.dtype))
            self.buffers.to_device(name, array)
        shapes = {}
        for name in self.output_names:
            shapes[name] = tuple(self.context.get_tensor_shape(name))
            dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
            self.context.set_tensor_address(name, self.buffers.allocate(name, shapes[name], dtype))
        if not self.context.execute_async_v3(self.buffers.stream_handle):
            raise EngineError("TensorRT execution failed")
        results = {n: self.buffers.from_device(n, shapes[n]) for n in self.output_names}
        self.buffers.synchronize()
        # Copy out of the reused page-locked buffers; keep each output's dtype (audio_token_mask is bool).
        return {n: results[n].reshape(shapes[n]).copy() for n in self.output_names}

    def close(self) -> None:
        """Release the execution context and engine before the memory and context they use."""
        with self.buffers.active():
            self.context = None
            self.engine = None
        self.buffers.release()


__all__ = [
    "EngineCacheError",
    "TensorRTEngine",
    "build_cached",
    "build_plan",
    "count_qdq_layers",
    "engine_key",
    "tensorrt_available",
    "timing_cache_path",
    "weakly_typed",
]
