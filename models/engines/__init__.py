"""Inference engines behind one interface: ``Engine.run(inputs) -> outputs``.

Backends: TensorRT (GPU, engines built on the device and cached), ONNX Runtime (CPU by default, CUDA /
TensorRT execution providers when present) and PyTorch (eager, the reference). The appliance picks one by
config with a fallback order (:func:`models.engines.select.open_scoring_engines`); the CPU default works anywhere.
"""

from models.engines.base import BackendUnavailable, Engine, EngineError

__all__ = ["BackendUnavailable", "Engine", "EngineError"]
