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
  accumulator grid changes a result by at most half a grid step of the output;
* max-pools between quantized tensors pool the uint8 codes themselves (:func:`pools_on_uint8`), a purely
  temporal one as a ``Max`` of strided ``Slice`` s, so that no pool runs in float or forces a layout change;
* the float 3-D stem over the raw clip (kept float by :func:`models.quantize.float_stems`) runs as a 2-D
  convolution over frames (:func:`models.engines.ort_stem.stem_as_2d`), on MLAS's blocked NCHWc kernels.

Weights (int8, per channel, symmetric) are left as they are: U8S8 is what the VNNI kernels run. The
rewritten graph and the file run literally differ only where a rounding decision moved (the int32 bias,
one requantization instead of two around a ReLU, a pooled value beyond the calibrated range no longer
clipped at 127 s, the stem's float sums in another order); ``tests/models/engines/test_int8.py`` holds the
mean difference under a quarter of INT8's own error against FP32.

Measured on the full model (ONNX Runtime 1.32, one thread, CPU time, load average 1.8, same process): the
INT8 video encoder took 588 ms with the first three rewrites only and 366 ms with all five and ONNX Runtime's
QDQ propagation off (:data:`models.engines.onnxruntime.QDQ_CPU_DISABLED_OPTIMIZERS`; FP32: 1500 ms), the
audio encoder 50 -> 34 ms (FP32: 131 ms); see ``docs/benchmarks/int8_cpu.md``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from models.engines.ort_stem import stem_as_2d

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
    counts.update(pools_on_uint8(model))
    counts["stem_as_2d"] = stem_as_2d(model)
    used = {i for n in graph.node for i in n.input} | graph_outputs
    keep_inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    return counts


def pools_on_uint8(model) -> dict[str, int]:  # model: onnx.ModelProto, rewritten in place
    """``DQ(s) -> MaxPool -> Q(s) -> DQ`` becomes a max-pool of the uint8 tensor itself, read by ``DQ(s)``.

    Why: the pattern ONNX Runtime would fuse into an integer max-pool needs one zero point on both sides, and
    after :func:`rewrite_for_x86` the pool's input often has zero point 0 (a folded ReLU) and its output 128,
    so it ran in float between a dequantization and a requantization (the audio encoder's four pools were a
    quarter of its INT8 time). Exact: the maximum commutes with the increasing map ``s * (q - z)``, so the
    pooled codes read with the input's zero point are the values the float pool gives (except, as in the
    ReLU fold, values beyond the calibrated range, which no longer saturate at 127 s).

    A purely temporal pool (kernel = stride = ``(k, 1, 1)``, unpadded; I3D's pool after res2) becomes the
    elementwise ``Max`` of ``k`` strided ``Slice`` s of the frames: ONNX Runtime has no channels-last 3-D
    pool, so a 3-D ``MaxPool`` made it transpose the whole res2 output to NCDHW and back, while Slice and Max
    work in whatever layout the neighbouring convolutions use.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return {"maxpool_uint8": 0, "temporal_pool_as_max": 0}  # integer Max/MaxPool need opset >= 12/13
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    counts = {"maxpool_uint8": 0, "temporal_pool_as_max": 0}

    def scalar(name: str) -> float | None:
        if name not in inits:
            return None
        value = numpy_helper.to_array(inits[name])
        return float(value.reshape(-1)[0]) if value.size == 1 else None

    prod = {o: n for n in graph.node for o in n.output}
    cons: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            cons[i].append(n)
    drop: set[int] = set()
    insert: dict[int, list] = {}  # id(pool) -> the nodes that replace it, in its place
    for pool in [n for n in graph.node if n.op_type == "MaxPool"]:
        dq = prod.get(pool.input[0])
        after = cons[pool.output[0]]
        if (len(pool.output) != 1 or dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3
                or len(after) != 1 or after[0].op_type != "QuantizeLinear" or pool.output[0] in graph_outputs):
            continue
        q = after[0]
        readers = cons[q.output[0]]
        scale = scalar(dq.input[1])
        if (scale is None or scale != scalar(q.input[1]) or scalar(dq.input[2]) is None or q.output[0] in graph_outputs
                or not readers or any(r.op_type != "DequantizeLinear" for r in readers)):
            continue
        codes, name = dq.input[0], pool.name or pool.output[0]
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        kernel, strides = list(attrs.get("kernel_shape", [])), list(attrs.get("strides", []))
        temporal = (len(kernel) == 3 and kernel[0] > 1 and kernel[1:] == [1, 1] and strides == kernel
                    and not any(attrs.get("pads", [])) and not attrs.get("ceil_mode", 0))
        pooled = f"{name}_neopain_x86_uint8"
        if temporal:
            k = kernel[0]
            slices = []
            for i in range(k):  # frames i, i+k, ...: floor(T/k) of them, the pool's output length
                part = f"{name}_neopain_x86_frames_{i}"
                consts = {"starts": [i], "ends": [i - k + 1 if i < k - 1 else 2**62], "axes": [2], "steps": [k]}
                for key, v in consts.items():
                    graph.initializer.append(numpy_helper.from_array(np.array(v, np.int64), f"{part}_{key}"))
                slices.append(helper.make_node("Slice", [codes, *(f"{part}_{key}" for key in consts)], [part], name=part))
            insert[id(pool)] = [*slices, helper.make_node("Max", [s.output[0] for s in slices], [pooled], name=pooled)]
            counts["temporal_pool_as_max"] += 1
        else:
            insert[id(pool)] = [helper.make_node("MaxPool", [codes], [pooled], name=pooled,
                                                 **{k: v for k, v in attrs.items() if k != "storage_order"})]
            counts["maxpool_uint8"] += 1
        for reader in readers:  # read the pooled codes with the input's scale and zero point
            reader.input[0], reader.input[1], reader.input[2] = pooled, dq.input[1], dq.input[2]
        drop |= {id(pool), id(q)} | ({id(dq)} if len(cons[dq.output[0]]) == 1 else set())
    if insert:
        nodes = [new for n in graph.node for new in (insert.get(id(n), []) if id(n) in drop else [n])]
        del graph.node[:]
        graph.node.extend(nodes)
    return counts


def _dequantize_node(inputs: list[str], output: str, axis: int):
    from onnx import helper

    return helper.make_node("DequantizeLinear", inputs, [output], name=output, axis=axis)


__all__ = ["cpu_int8_model_bytes", "rewrite_for_x86"]
