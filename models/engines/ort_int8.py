"""The INT8 (QDQ) parts as ONNX Runtime's x86 CPU kernels want them: an exact, in-memory rewrite.

Why a rewrite, and why not a second file: the quantized graph on disk is the one TensorRT builds from, so
it follows TensorRT's rules — signed INT8, symmetric (zero point 0) activations and weights. ONNX Runtime's
fast x86 kernels (MLAS QGEMM with AVX-512 VNNI / AVX2 ``vpmaddubsw``) multiply *unsigned* 8-bit
activations by signed weights (U8S8); with signed activations on x86 its QDQ fusion leaves most
convolutions and every ReLU in float (measured on the full video encoder: slower than FP32). So when a
QDQ part is opened on the CPU provider this module rewrites the graph in memory, keeping its quantization:

* an activation ``QuantizeLinear``/``DequantizeLinear`` pair with int8 zero point 0 becomes uint8 with zero
  point 128: ``clamp(round(x/s), -128, 127) + 128`` — the same grid, shifted, so every dequantized value
  is identical;
* ``Q(s) -> DQ -> Relu -> Q(s) -> DQ`` (the quantizer in :mod:`models.quantize` gives the pre-ReLU tensor
  the post-ReLU scale, which loses nothing because ReLU zeroes the negative side) becomes one uint8 pair
  with zero point 0: ``clamp(round(x/s), 0, 255)``. Identical to the INT8 graph wherever
  ``x <= 127.5 s``, i.e. inside the calibrated range; beyond it the uint8 grid saturates at 255 s instead
  of 127 s (closer to FP32, never further). ONNX Runtime then fuses each conv with its output
  quantization (QLinearConv) instead of running ReLU in float between two requantizations;
* a float bias of a Conv/Gemm whose input and weight are both dequantized becomes int32 with scale
  ``s_x * s_w`` (what ONNX Runtime's own quantizer writes; TensorRT wants float biases, so the file keeps
  them float), the pattern ONNX Runtime needs to fuse the QLinearConv. Rounding the bias to the
  accumulator grid changes a result by at most half a grid step of the output.

Weights (int8, per channel, symmetric) are left as they are: U8S8 is what the VNNI kernels run. The
rewritten graph and the file run literally differ only where a rounding decision moved (the int32 bias,
one requantization instead of two around a ReLU); ``tests/models/engines/test_int8.py`` holds the mean
difference under a quarter of INT8's own error against FP32.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _load(path: str | Path):  # -> onnx.ModelProto
    import onnx

    return onnx.load(str(path))


def cpu_int8_model_bytes(path: str | Path) -> tuple[bytes, dict[str, int]]:
    """The rewritten QDQ model at ``path`` serialized for ``InferenceSession``, and what was rewritten."""
    model = _load(path)
    counts = rewrite_for_x86(model)
    return model.SerializeToString(), counts


def rewrite_for_x86(model) -> dict[str, int]:  # model: onnx.ModelProto, rewritten in place
    """Rewrite ``model`` in place (see the module docstring); returns counts of each rewrite."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}

    def producers() -> dict[str, object]:
        return {o: n for n in graph.node for o in n.output}

    def consumers() -> dict[str, list]:
        out: dict[str, list] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                out[i].append(n)
        return out

    def value(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def qparams(node) -> tuple[np.ndarray | None, np.ndarray | None]:
        scale = value(node.input[1])
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return scale, zp

    def symmetric_int8_activation(node) -> bool:
        scale, zp = qparams(node)
        return (scale is not None and zp is not None and zp.dtype == np.int8 and zp.size == 1
                and int(zp.reshape(-1)[0]) == 0 and scale.size == 1)

    new_inits: dict[str, object] = {}

    def zero_point(dtype: type, v: int) -> str:
        name = f"neopain_x86_zp_{np.dtype(dtype).name}_{v}"
        if name not in new_inits:
            new_inits[name] = numpy_helper.from_array(np.array(v, dtype=dtype), name)
        return name

    counts = {"relu_folded": 0, "activations_to_uint8": 0, "bias_to_int32": 0}
    prod, cons = producers(), consumers()

    # 1. Q(s) -> DQ -> Relu -> Q(s) -> DQ...  =>  Q(s, u8, 0) -> DQ...
    removed: set[int] = set()
    relu_zp0_tensors: set[str] = set()  # Q outputs that now carry uint8 with zero point 0
    for relu in [n for n in graph.node if n.op_type == "Relu"]:
        dq_a = prod.get(relu.input[0])
        if dq_a is None or dq_a.op_type != "DequantizeLinear" or len(cons[dq_a.output[0]]) != 1:
            continue
        q_a = prod.get(dq_a.input[0])
        if q_a is None or q_a.op_type != "QuantizeLinear" or len(cons[q_a.output[0]]) != 1:
            continue
        after = cons[relu.output[0]]
        if len(after) != 1 or after[0].op_type != "QuantizeLinear" or relu.output[0] in graph_outputs:
            continue
        q_b = after[0]
        if not (symmetric_int8_activation(q_a) and symmetric_int8_activation(q_b)):
            continue
        if float(qparams(q_a)[0]) != float(qparams(q_b)[0]) or q_b.output[0] in graph_outputs:
            continue
        for dq in cons[q_b.output[0]]:  # the DQs that read the ReLU's quantized output now read q_a's
            for i, name in enumerate(dq.input):
                if name == q_b.output[0]:
                    dq.input[i] = q_a.output[0]
        removed.update({id(dq_a), id(relu), id(q_b)})
        relu_zp0_tensors.add(q_a.output[0])
        counts["relu_folded"] += 1
    if removed:
        keep = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(keep)
        prod, cons = producers(), consumers()

    # 2. every activation pair int8/zp 0 -> uint8 (zp 0 where a ReLU was folded, else 128)
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        if q.input[0] in inits or not symmetric_int8_activation(q):
            continue
        readers = cons[q.output[0]]
        if q.output[0] in graph_outputs or any(r.op_type != "DequantizeLinear" for r in readers):
            continue
        zp = zero_point(np.uint8, 0 if q.output[0] in relu_zp0_tensors else 128)
        for node in (q, *readers):
            node.input[2] = zp
        counts["activations_to_uint8"] += 1

    # 3. float biases of quantized Conv/Gemm -> int32 on the accumulator grid s_x * s_w
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
            continue
        if node.op_type == "Gemm" and any(a.name in ("alpha", "beta") and a.f != 1.0 for a in node.attribute):
            continue
        dq_x, dq_w = prod.get(node.input[0]), prod.get(node.input[1])
        if not (dq_x is not None and dq_w is not None and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        s_x, s_w = value(dq_x.input[1]), value(dq_w.input[1])
        bias = value(node.input[2])
        if s_x is None or s_w is None or bias is None or s_x.size != 1 or bias.dtype != np.float32:
            continue
        scale = (s_x.astype(np.float32).reshape(()) * s_w.astype(np.float32)).reshape(-1)
        if scale.size not in (1, bias.size) or not np.all(scale > 0):
            continue
        scale = np.broadcast_to(scale, bias.shape).astype(np.float32)
        q_bias = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        base = node.input[2]
        names = [f"{base}_neopain_x86_int32", f"{base}_neopain_x86_scale", f"{base}_neopain_x86_zp"]
        new_inits[names[0]] = numpy_helper.from_array(q_bias, names[0])
        new_inits[names[1]] = numpy_helper.from_array(scale, names[1])
        new_inits[names[2]] = numpy_helper.from_array(np.zeros(bias.shape, np.int32), names[2])
        out = f"{base}_neopain_x86_dq_{node.name or id(node)}"
        dq = _dequantize_node(names, out, axis=0)
        graph.node.insert(list(graph.node).index(node), dq)
        node.input[2] = out
        counts["bias_to_int32"] += 1
    graph.initializer.extend(new_inits.values())
    used = {i for n in graph.node for i in n.input} | graph_outputs
    keep_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    return counts


def _dequantize_node(inputs: list[str], output: str, axis: int):
    from onnx import helper

    return helper.make_node("DequantizeLinear", inputs, [output], name=output, axis=axis)


__all__ = ["cpu_int8_model_bytes", "rewrite_for_x86"]
