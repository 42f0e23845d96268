"""PyTorch eager backend: the reference the other backends are checked against, and a CPU/GPU fallback."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from models.engines.base import BackendUnavailable, Engine


class TorchEngine(Engine):
    backend = "torch"

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str = "cpu",
        half: bool = False,
    ) -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(f"PyTorch device {device!r} requested but CUDA is not available")
        if half and not device.startswith("cuda"):
            raise BackendUnavailable("PyTorch FP16 inference is only supported on CUDA here")
        self.device = torch.device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.module = module.to(self.device, self.dtype).eval()
        self.input_names = list(input_names)
        self.output_names = list(output_names)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return tensor.to(self.dtype) if tensor.is_floating_point() else tensor

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        outputs = self.module(*(self._tensor(inputs[n]) for n in self.input_names))
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return {n: o.float().cpu().numpy() for n, o in zip(self.output_names, outputs)}
