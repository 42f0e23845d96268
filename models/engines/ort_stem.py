"""The float 3-D stem of a quantized video part run as a 2-D convolution over frames (ONNX Runtime, CPU).

Why: the I3D stem (Conv3d 5x7x7 over the RGB clip, ReLU, MaxPool3d 1x3x3) stays float in the QDQ graph
(:func:`models.quantize.float_stems`), and ONNX Runtime runs a float 3-D convolution through a generic
im2col + GEMM and a 3-D max-pool through a generic loop. On the 2-core CPU (full model, profiled with
``SessionOptions.enable_profiling``) the stem conv, its max-pool and the quantization/transposes around them
were over half of the whole INT8 video encoder. A 2-D convolution instead gets MLAS's blocked NCHWc
kernels (the ``NchwcTransformer``: conv + ReLU + max-pool in one layout, written out channels-last, which is
what the quantized convolutions after it read): the stem became 3x cheaper.

How, exactly: output frame ``t`` of a Conv3d (kernel ``kt x kh x kw``, temporal stride ``st``, temporal
padding ``p0``) reads the zero-padded input frames ``t*st + dt``, ``dt < kt``. Gathering those ``kt`` frames
side by side as ``kt*C`` channels of one image makes the Conv3d a Conv2d with the weight
``W2[o, dt*C + c] = W[o, c, dt]``, run on all output frames as one batch ``(B*T', kt*C, H, W)``. ReLU is
elementwise and a ``1 x k x k`` max-pool works frame by frame, so both follow in 2-D. The result is the same
sum of the same products (float rounding of a different summation order: ~1e-6 relative).

Only applied in the in-memory CPU view of a QDQ part (:mod:`models.engines.ort_int8`); the files on disk,
which TensorRT builds from, keep the stem as exported.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _static_input_shape(graph: Any, name: str) -> tuple[int, ...] | None:
    """(C, T, H, W) of graph input ``name`` when all of them are fixed numbers (the batch may be symbolic)."""
    for value in graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            if len(dims) == 5 and all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
                return tuple(int(d.dim_value) for d in dims[1:])
    return None


def _out(size: int, pad0: int, pad1: int, kernel: int, stride: int) -> int:
    return (size + pad0 + pad1 - kernel) // stride + 1


def _plain_3d_pool(node: Any) -> bool:
    """A MaxPool working frame by frame: kernel 1 and stride 1 in time, no temporal padding, no dilation."""
    a = _attrs(node)
    kernel, strides = a.get("kernel_shape", []), a.get("strides", [1, 1, 1])
    pads = a.get("pads", [0] * 6)
    return (len(kernel) == 3 and kernel[0] == 1 and strides[0] == 1 and pads[0] == pads[3] == 0
            and a.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and not a.get("ceil_mode", 0)
            and all(d == 1 for d in a.get("dilations", [1, 1, 1])) and len(node.output) == 1)


def stem_as_2d(model: Any) -> int:
    """Rewrite every float Conv3d over a graph input (+ its ReLU and frame-wise max-pool) in 2-D, in place.

    Returns how many stems were rewritten. A conv whose shape or attributes the rewrite does not cover
    (grouped, dilated, auto-padded, symbolic frame size) is left as it is.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def sole_reader(name: str, op_type: str) -> Any | None:
        after = readers.get(name, [])
        return after[0] if len(after) == 1 and after[0].op_type == op_type and name not in outputs else None

    replace: dict[int, list[Any]] = {}  # id(conv) -> the 2-D nodes put in its place
    dropped: set[int] = set()  # its ReLU and max-pool
    for conv in [n for n in graph.node if n.op_type == "Conv"]:
        shape = _static_input_shape(graph, conv.input[0])
        weight = inits.get(conv.input[1]) if len(conv.input) > 1 else None
        a = _attrs(conv)
        if shape is None or weight is None or len(weight.dims) != 5 or a.get("group", 1) != 1:
            continue
        if any(d != 1 for d in a.get("dilations", [1, 1, 1])) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        channels, frames, height, width = shape
        w = numpy_helper.to_array(weight)
        c_out, c_in, kt, kh, kw = w.shape
        if c_in != channels:
            continue
        st, sh, sw = a.get("strides", [1, 1, 1])
        pt0, ph0, pw0, pt1, ph1, pw1 = a.get("pads", [0] * 6)
        t_out = _out(frames, pt0, pt1, kt, st)
        h_out, w_out = _out(height, ph0, ph1, kh, sh), _out(width, pw0, pw1, kw, sw)
        # which input frame (of the padded clip) each output frame reads at each temporal tap
        taps = np.arange(t_out)[:, None] * st + np.arange(kt)[None, :]
        if t_out < 1 or taps.max() >= frames + pt0 + pt1:
            continue

        prefix = f"{conv.name or conv.output[0]}_neopain_2d"
        new_inits = {
            f"{prefix}_pads": np.array([0, pt0, 0, 0, 0, 0, pt1, 0, 0, 0], np.int64),
            f"{prefix}_taps": taps.astype(np.int64),
            f"{prefix}_frames_shape": np.array([-1, kt * c_in, height, width], np.int64),
            f"{prefix}_weight": np.ascontiguousarray(w.transpose(0, 2, 1, 3, 4).reshape(c_out, kt * c_in, kh, kw)),
        }
        nodes = [helper.make_node("Transpose", [conv.input[0]], [f"{prefix}_btc"], perm=[0, 2, 1, 3, 4],
                                  name=f"{prefix}_btc")]
        stacked_from = f"{prefix}_btc"
        if pt0 or pt1:
            nodes.append(helper.make_node("Pad", [stacked_from, f"{prefix}_pads"], [f"{prefix}_padded"], name=f"{prefix}_pad"))
            stacked_from = f"{prefix}_padded"
        nodes += [
            helper.make_node("Gather", [stacked_from, f"{prefix}_taps"], [f"{prefix}_taps_out"], axis=1, name=f"{prefix}_gather"),
            helper.make_node("Reshape", [f"{prefix}_taps_out", f"{prefix}_frames_shape"], [f"{prefix}_frames"],
                             name=f"{prefix}_frames"),
            helper.make_node("Conv", [f"{prefix}_frames", f"{prefix}_weight", *conv.input[2:]], [f"{prefix}_conv"],
                             kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph0, pw0, ph1, pw1], name=f"{prefix}_conv"),
        ]
        replaced, last, tail = [conv], conv.output[0], f"{prefix}_conv"
        relu = sole_reader(last, "Relu")
        if relu is not None:
            nodes.append(helper.make_node("Relu", [tail], [f"{prefix}_relu"], name=f"{prefix}_relu"))
            replaced.append(relu)
            last, tail = relu.output[0], f"{prefix}_relu"
        pool = sole_reader(last, "MaxPool")
        if pool is not None and _plain_3d_pool(pool):
            p = _attrs(pool)
            _, kph, kpw = p["kernel_shape"]
            _, sph, spw = p.get("strides", [1, 1, 1])
            _, pph0, ppw0, _, pph1, ppw1 = p.get("pads", [0] * 6)
            nodes.append(helper.make_node("MaxPool", [tail], [f"{prefix}_pool"], kernel_shape=[kph, kpw],
                                          strides=[sph, spw], pads=[pph0, ppw0, pph1, ppw1], name=f"{prefix}_pool"))
            replaced.append(pool)
            last, tail = pool.output[0], f"{prefix}_pool"
            h_out, w_out = _out(h_out, pph0, pph1, kph, sph), _out(w_out, ppw0, ppw1, kpw, spw)
        # back to (B, C, T', H', W') by way of channels-last frames: ONNX Runtime writes the NCHWc result
        # channels-last straight away and the transpose into NCDHW cancels against the one it puts in front of
        # the quantized (channels-last) convolutions that read it
        new_inits[f"{prefix}_clip_shape"] = np.array([-1, t_out, h_out, w_out, c_out], np.int64)
        nodes += [
            helper.make_node("Transpose", [tail], [f"{prefix}_nhwc"], perm=[0, 2, 3, 1], name=f"{prefix}_nhwc"),
            helper.make_node("Reshape", [f"{prefix}_nhwc", f"{prefix}_clip_shape"], [f"{prefix}_ndhwc"], name=f"{prefix}_ndhwc"),
            helper.make_node("Transpose", [f"{prefix}_ndhwc"], [last], perm=[0, 4, 1, 2, 3], name=f"{prefix}_ncdhw"),
        ]
        replace[id(conv)] = nodes
        dropped |= {id(n) for n in replaced[1:]}
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in new_inits.items())
    if replace:  # the 3-D weights stay as unused initializers: rewrite_for_x86 drops those at its end
        rebuilt = [new for n in graph.node if id(n) not in dropped for new in replace.get(id(n), [n])]
        del graph.node[:]
        graph.node.extend(rebuilt)
    return len(replace)


__all__ = ["stem_as_2d"]
