"""The CPU view's layout rewrites of a QDQ part (models.engines.ort_stem, ort_int8.pools_on_uint8) compute what
the graph as written computes: checked by running both in ONNX Runtime on small graphs built here, including
the shapes the full model does not have (temporal strides, odd frame counts, batch 2)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.engines.ort_int8 import pools_on_uint8
from models.engines.ort_stem import stem_as_2d

OPSET = 17


def _model(nodes, inputs, output, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})[0]


def stem(frames: int, kernel_t: int, stride_t: int, pool_stride_t: int, seed: int = 0) -> onnx.ModelProto:
    """Conv3d (k_t x 7 x 7, 'same' padding, stride (s_t, 2, 2)) + ReLU + MaxPool3d (1, 3, 3) over (B, 3, T, 20, 24)."""
    rng = np.random.default_rng(seed)
    inits = {"w": rng.standard_normal((6, 3, kernel_t, 7, 7)).astype(np.float32) * 0.1,
             "b": rng.standard_normal(6).astype(np.float32) * 0.1}
    nodes = [
        helper.make_node("Conv", ["clip", "w", "b"], ["c"], kernel_shape=[kernel_t, 7, 7], strides=[stride_t, 2, 2],
                         pads=[kernel_t // 2, 3, 3, kernel_t // 2, 3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[1, 3, 3], strides=[pool_stride_t, 2, 2], pads=[0, 1, 1, 0, 1, 1]),
        helper.make_node("Mul", ["p", "two"], ["y"]),  # a reader after the stem, as the first res block is
    ]
    inits["two"] = np.array(2.0, np.float32)
    clip = helper.make_tensor_value_info("clip", TensorProto.FLOAT, ["batch", 3, frames, 20, 24])
    return _model(nodes, [clip], "y", inits)


@pytest.mark.parametrize("frames, kernel_t, stride_t, pool_stride_t, pool_rank", [
    (8, 5, 1, 1, 2),   # the I3D stem (pytorchvideo): conv, ReLU and pool all in 2-D
    (7, 3, 2, 2, 3),   # mmaction2's strides, odd frame count: the pool strides in time, so it stays 3-D
])
def test_stem_as_2d_computes_the_3d_stem(frames: int, kernel_t: int, stride_t: int, pool_stride_t: int, pool_rank: int) -> None:
    model = stem(frames, kernel_t, stride_t, pool_stride_t)
    x = np.random.default_rng(1).standard_normal((2, 3, frames, 20, 24)).astype(np.float32)
    want = _run(model, x)
    assert stem_as_2d(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gather") == ops.count("Conv") == ops.count("Relu") == ops.count("MaxPool") == 1
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert [len(t.dims) for t in model.graph.initializer if t.name == conv.input[1]] == [4]  # a 2-D conv
    pool = next(n for n in model.graph.node if n.op_type == "MaxPool")
    assert len(helper.get_attribute_value(pool.attribute[0])) == pool_rank  # kernel_shape
    got = _run(model, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_stem_as_2d_leaves_a_symbolic_frame_count_alone() -> None:
    model = stem(8, 5, 1, 1)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "frames"
    assert stem_as_2d(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "MaxPool", "Mul"]


def qdq_pool(kernel: list[int], strides: list[int], shape: list[int]) -> onnx.ModelProto:
    """x -> Q(s, u8, 0) -> DQ -> MaxPool -> Q(s, u8, 128) -> DQ -> y: the pattern the x86 rewrite leaves
    after a folded ReLU (zero point 0) in front of a pool whose own quantization kept zero point 128."""
    inits = {"s": np.array(0.05, np.float32), "z0": np.array(0, np.uint8), "z128": np.array(128, np.uint8)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z0"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z0"], ["xd"]),
        helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=kernel, strides=strides),
        helper.make_node("QuantizeLinear", ["p", "s", "z128"], ["pq"]),
        helper.make_node("DequantizeLinear", ["pq", "s", "z128"], ["y"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], "y", inits)


@pytest.mark.parametrize("kernel, shape, rewrite", [
    ([2, 1, 1], [1, 4, 8, 3, 5], "temporal_pool_as_max"),  # I3D's pool after res2
    ([3, 1, 1], [2, 4, 7, 3, 5], "temporal_pool_as_max"),  # 7 frames: the last one is dropped, as by the pool
    ([2, 2], [1, 4, 6, 6], "maxpool_uint8"),               # VGGish's pools
])
def test_max_pools_run_on_the_uint8_codes(kernel: list[int], shape: list[int], rewrite: str) -> None:
    model = qdq_pool(kernel, kernel, shape)
    # inside the calibrated range (|x| <= 127 s): the rewrite must give exactly the graph's values
    x = np.random.default_rng(2).uniform(-1.0, 6.3, size=shape).astype(np.float32)
    want = _run(model, x)
    counts = pools_on_uint8(model)
    assert counts[rewrite] == 1 and sum(counts.values()) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    assert ("Max" in ops) == (rewrite == "temporal_pool_as_max")
    got = _run(model, x)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    # beyond it, the pooled codes keep the wider uint8 range of the folded ReLU instead of saturating at 127 s
    big = np.full(shape, 9.0, np.float32)
    assert _run(model, big).max() == pytest.approx(9.0, abs=0.05)


def test_a_pool_requantized_with_another_scale_is_left_in_float() -> None:
    model = qdq_pool([2, 2], [2, 2], [1, 2, 4, 4])
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.07, np.float32), "s2"))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "p")
    q.input[1] = "s2"
    assert sum(pools_on_uint8(model).values()) == 0
    assert "MaxPool" in [n.op_type for n in model.graph.node]
