"""ONNX export of neopain models and a parity check against ONNX Runtime.

Exporter choice (measured with torch 2.13 CPU, onnx 1.23, onnxruntime 1.32, onnxscript 0.7):
both the TorchScript ("legacy", ``dynamo=False``) and the ``torch.export`` ("dynamo") exporters
export the cross-modal fusion with a dynamic batch and match ONNX Runtime to ~1e-6. The default
here is the **legacy** exporter because

* it writes opset 17 natively; the dynamo exporter only implements opset >= 18 and down-converts
  (with a fallback to the onnx C API converter), and TensorRT/older runtimes on the device are the
  consumers we must satisfy;
* it takes ~1-2 s for the tiny estimator where the dynamo exporter took ~30 s for the fusion head
  alone on the 2-core build machine, which matters for CI and for export-on-commission;
* dynamic batch through ``dynamic_axes`` is verified by :func:`onnx_parity` at several batch sizes.

``nn.MultiheadAttention``'s fused fast path cannot be traced by the legacy exporter, so it is
switched off for the duration of the export (``torch.backends.mha.set_fastpath_enabled(False)``)
and restored afterwards. ``dynamo=True`` stays available (``export_onnx(..., dynamo=True)``) for
when the legacy exporter is removed; the tests exercise it too.

Inputs are passed as a dict in forward order; its keys become the ONNX input names. The legacy
exporter drops inputs the graph never reads (e.g. a unimodal baseline's other modalities), so a
runtime must feed inputs by the names the ONNX file declares, as :func:`onnx_parity` does. Outputs are
named ``output_names`` (default: the estimator's ``nips``, ``item_logits``, ``modality_weights`` for
three outputs, ``output`` for one).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

DEFAULT_OUTPUT_NAMES = ("nips", "item_logits", "modality_weights")


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _as_tuple(outputs: object) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return tuple(outputs)
    raise TypeError(f"module must return a tensor or a tuple of tensors, got {type(outputs).__name__}")


def _output_names(module: nn.Module, inputs: Mapping[str, torch.Tensor], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        return list(names)
    with torch.no_grad():
        count = len(_as_tuple(module(**inputs)))
    if count == len(DEFAULT_OUTPUT_NAMES):
        return list(DEFAULT_OUTPUT_NAMES)
    if count == 1:
        return ["output"]
    return [f"output_{i}" for i in range(count)]


def export_onnx(
    module: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | Path,
    opset: int = 17,
    dynamic_batch: bool = True,
    output_names: Sequence[str] | None = None,
    dynamo: bool = False,
) -> Path:
    """Export ``module`` (in eval mode) to ``path`` and return the path.

    All shapes are fixed to those of ``example_inputs`` except, with ``dynamic_batch``, dim 0 of
    every input and output. The module's training flag is restored afterwards.
    """
    if not example_inputs:
        raise ValueError("example_inputs must name at least one input")
    for name, value in example_inputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"example input {name!r} must be a tensor, got {type(value).__name__}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization, masks), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = dict(example_inputs)
    names_in = list(inputs)
    was_training = module.training
    module.eval()
    try:
        with _mha_fastpath_disabled(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            names_out = _output_names(module, inputs, output_names)
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=4096)
                program = torch.onnx.export(
                    module,
                    tuple(inputs.values()),
                    dynamo=True,
                    input_names=names_in,
                    output_names=names_out,
                    opset_version=opset,
                    dynamic_shapes={k: {0: batch} for k in names_in} if dynamic_batch else None,
                    external_data=False,
                    verbose=False,
                )
                program.save(str(path))
            else:
                torch.onnx.export(
                    module,
                    tuple(inputs.values()),
                    str(path),
                    dynamo=False,
                    input_names=names_in,
                    output_names=names_out,
                    opset_version=opset,
                    dynamic_axes={k: {0: "batch"} for k in names_in + names_out} if dynamic_batch else None,
                    do_constant_folding=True,
                )
    finally:
        module.train(was_training)
    return path


def onnx_parity(module: nn.Module, path: str | Path, inputs: Mapping[str, torch.Tensor]) -> float:
    """Max absolute difference between ``module`` (eval, PyTorch) and the ONNX file on ORT CPU.

    Compares every output in order; a shape mismatch is an error, not a large number.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_inputs = [i.name for i in session.get_inputs()]
    missing = [name for name in onnx_inputs if name not in inputs]
    if missing:
        raise ValueError(f"the ONNX model needs inputs {missing} that were not given (given: {sorted(inputs)})")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            reference = _as_tuple(module(**inputs))
    finally:
        module.train(was_training)
    # The exporter prunes inputs the graph never reads (a unimodal baseline reads one modality),
    # so feed exactly the inputs the file declares, by name.
    outputs = session.run(None, {name: inputs[name].detach().cpu().numpy() for name in onnx_inputs})
    if len(outputs) != len(reference):
        raise ValueError(f"ONNX model has {len(outputs)} outputs, PyTorch module {len(reference)}")
    worst = 0.0
    for index, (got, want) in enumerate(zip(outputs, reference)):
        want_np = want.detach().cpu().numpy()
        if got.shape != want_np.shape:
            raise ValueError(f"output {index}: ONNX shape {got.shape} != PyTorch shape {want_np.shape}")
        if want_np.size:
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want_np.astype(np.float64)))))
    return worst
