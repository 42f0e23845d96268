"""Host/device buffers for TensorRT behind one small interface, implemented with pycuda.

Why an interface: the user asked for pycuda; NVIDIA now recommends cuda-python. Keeping allocation,
copies and the stream behind :class:`DeviceBuffers` means swapping the library touches this file only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.engines.base import BackendUnavailable


def _pycuda() -> Any:
    try:
        import pycuda.autoinit  # noqa: F401  creates the CUDA context on device 0
        import pycuda.driver as cuda
    except ImportError as exc:
        raise BackendUnavailable("pycuda is not installed (pip install .[jetson] on the GPU device)") from exc
    except Exception as exc:  # pycuda raises its own error when no GPU / driver is present
        raise BackendUnavailable(f"CUDA is not usable here: {exc}") from exc
    return cuda


def gpu_identity() -> tuple[str, int]:
    """(GPU name, SM count) of device 0: part of the engine cache key."""
    cuda = _pycuda()
    device = cuda.Context.get_device()
    return device.name(), int(device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT))


class DeviceBuffers:
    """Page-locked host arrays and device allocations for named tensors, plus one CUDA stream."""

    def __init__(self) -> None:
        self.cuda = _pycuda()
        self.stream = self.cuda.Stream()
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, Any] = {}

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> int:
        """(Re)allocate ``name`` for ``shape`` if it does not fit; returns the device pointer."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        current = self.host.get(name)
        if current is None or current.nbytes < nbytes or current.dtype != dtype:
            self.host[name] = self.cuda.pagelocked_empty(int(np.prod(shape)), dtype)
            self.device[name] = self.cuda.mem_alloc(max(nbytes, 1))
        return int(self.device[name])

    def to_device(self, name: str, array: np.ndarray) -> None:
        host = self.host[name][: array.size]
        host[:] = array.ravel()
        self.cuda.memcpy_htod_async(self.device[name], host, self.stream)

    def from_device(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        host = self.host[name][:size]
        self.cuda.memcpy_dtoh_async(host, self.device[name], self.stream)
        return host

    @property
    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def free(self) -> None:
        for allocation in self.device.values():
            allocation.free()
        self.device.clear()
        self.host.clear()
