"""Host/device buffers for TensorRT behind one small interface: pycuda, or NVIDIA's cuda-python.

Why an interface: the device image ships pycuda (``pip install .[jetson]``); a GPU machine prepared from the
package registry alone (``scripts/gpu-check.sh``) gets cuda-python, whose wheels need no CUDA toolkit to
install, where pycuda's source build does. Allocation, copies and the stream live behind
:class:`DeviceBuffers`, so the choice touches this file only: pycuda when it imports, else cuda-python's
runtime API (``cudaMallocHost``/``cudaMemcpyAsync``/``cudaStreamSynchronize``, as in TensorRT's own samples).

Threads: the daemon loads its engines in the main thread and scores in another. The runtime API (cuda-python,
and TensorRT itself) uses the device's *primary* context in any thread. pycuda's driver calls need a context
current in the calling thread, and ``pycuda.autoinit`` would make a context of its own current in the importing
thread only: every copy from the scoring thread would then fail. So with pycuda the buffers retain device 0's
primary context (the one TensorRT uses) and :meth:`DeviceBuffers.active` pushes it for each call.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any, Iterator

import numpy as np

from models.engines.base import BackendUnavailable


def _pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None
    try:
        cuda.init()
        cuda.Device(0)
    except Exception as exc:  # pycuda raises its own error when no GPU / driver is present
        raise BackendUnavailable(f"CUDA is not usable here: {exc}") from exc
    return cuda


@contextlib.contextmanager
def _pushed(context: Any) -> Iterator[None]:
    """``context`` (pycuda) current in the calling thread for the block."""
    context.push()
    try:
        yield
    finally:
        context.pop()


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def _check(result: Any) -> Any:
    """cuda-python calls return (error, value...); raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise BackendUnavailable(f"CUDA runtime error {error}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def cuda_library() -> tuple[str, Any]:
    """("pycuda", module) or ("cuda-python", cudart); BackendUnavailable when neither is installed."""
    cuda = _pycuda()
    if cuda is not None:
        return "pycuda", cuda
    cudart = _cudart()
    if cudart is not None:
        return "cuda-python", cudart
    raise BackendUnavailable("neither pycuda nor cuda-python is installed (pip install .[jetson] on the device, "
                             "or pip install cuda-python)")


def gpu_identity() -> tuple[str, int]:
    """(GPU name, SM count) of device 0: part of the engine cache key."""
    kind, lib = cuda_library()
    if kind == "pycuda":
        device = lib.Device(0)
        return device.name(), int(device.get_attribute(lib.device_attribute.MULTIPROCESSOR_COUNT))
    try:
        props = _check(lib.cudaGetDeviceProperties(0))
    except Exception as exc:  # no driver / no device
        raise BackendUnavailable(f"CUDA is not usable here: {exc}") from exc
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), int(props.multiProcessorCount)


class DeviceBuffers:
    """Page-locked host arrays and device allocations for named tensors, plus one CUDA stream."""

    def __init__(self) -> None:
        self.kind, self.lib = cuda_library()
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, Any] = {}
        self._host_ptrs: dict[str, int] = {}
        # pycuda: device 0's primary context, the one TensorRT's runtime calls use (module doc)
        self.context = self.lib.Device(0).retain_primary_context() if self.kind == "pycuda" else None
        with self.active():
            self.stream = self.lib.Stream() if self.kind == "pycuda" else _check(self.lib.cudaStreamCreate())

    def active(self) -> contextlib.AbstractContextManager:
        """The buffers' CUDA context current in the calling thread for a block (pycuda; the runtime API of
        cuda-python binds the primary context in every thread by itself)."""
        return _pushed(self.context) if self.context is not None else contextlib.nullcontext()

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> int:
        """(Re)allocate ``name`` for ``shape`` if it does not fit; returns the device pointer."""
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        current = self.host.get(name)
        if current is None or current.nbytes < nbytes or current.dtype != dtype:
            self._free(name)
            if self.kind == "pycuda":
                self.host[name] = self.lib.pagelocked_empty(count, dtype)
                self.device[name] = self.lib.mem_alloc(max(nbytes, 1))
            else:
                pointer = int(_check(self.lib.cudaMallocHost(max(nbytes, 1))))
                raw = (ctypes.c_byte * max(nbytes, 1)).from_address(pointer)
                self.host[name] = np.frombuffer(raw, dtype=np.uint8)[:nbytes].view(dtype)
                self._host_ptrs[name] = pointer
                self.device[name] = int(_check(self.lib.cudaMalloc(max(nbytes, 1))))
        return int(self.device[name])

    def to_device(self, name: str, array: np.ndarray) -> None:
        host = self.host[name][: array.size]
        host[:] = array.ravel()
        if self.kind == "pycuda":
            self.lib.memcpy_htod_async(self.device[name], host, self.stream)
        else:
            kind = self.lib.cudaMemcpyKind.cudaMemcpyHostToDevice
            _check(self.lib.cudaMemcpyAsync(self.device[name], host.ctypes.data, host.nbytes, kind, self.stream))

    def from_device(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        host = self.host[name][:size]
        if self.kind == "pycuda":
            self.lib.memcpy_dtoh_async(host, self.device[name], self.stream)
        else:
            kind = self.lib.cudaMemcpyKind.cudaMemcpyDeviceToHost
            _check(self.lib.cudaMemcpyAsync(host.ctypes.data, self.device[name], host.nbytes, kind, self.stream))
        return host

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle) if self.kind == "pycuda" else int(self.stream)

    def synchronize(self) -> None:
        if self.kind == "pycuda":
            self.stream.synchronize()
        else:
            _check(self.lib.cudaStreamSynchronize(self.stream))

    def _free(self, name: str) -> None:
        allocation = self.device.pop(name, None)
        self.host.pop(name, None)
        pointer = self._host_ptrs.pop(name, None)
        if allocation is None:
            return
        if self.kind == "pycuda":
            allocation.free()
        else:
            self.lib.cudaFree(allocation)
            if pointer is not None:
                self.lib.cudaFreeHost(pointer)

    def free(self) -> None:
        for name in list(self.device):
            self._free(name)

    def release(self) -> None:
        """Free everything, the stream included, and let go of the context (after :meth:`free`)."""
        with self.active():
            self.free()
            if self.kind != "pycuda" and self.stream is not None:
                self.lib.cudaStreamDestroy(self.stream)
            self.stream = None
        if self.context is not None:
            self.context.detach()  # the primary context's retain count, taken in __init__
            self.context = None
