"""I3D-R50 builder, video encoder, clip pre-processing and ONNX export of the encoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.configs import VideoConfig, full_config, tiny_config
from models.features.video import preprocess_clip, sample_frame_indices
from models.video import I3DResNet, create_i3d_r50, create_video_encoder, res5_shape

# pytorchvideo i3d_r50 conv_a temporal kernels, written out per block (reference.md "Networks").
PYTORCHVIDEO_CONV_A_T = {1: [3, 3, 3], 3: [3, 1, 3, 1], 4: [3, 1, 3, 1, 3, 1], 5: [1, 3, 1]}


def _kinetics_cfg() -> VideoConfig:
    return dataclasses.replace(full_config().video, num_classes=400)


# --- topology -------------------------------------------------------------------------------------


def test_parameter_count_matches_pytorchvideo_i3d_r50() -> None:
    model = create_i3d_r50(_kinetics_cfg())
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 28.0e6) / 28.0e6 < 0.005, params
    # 1 stem conv + 16 bottlenecks x 3 convs + 4 shortcut convs; BN after each; one Linear.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert len(convs) == 1 + 16 * 3 + 4
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == len(convs)
    assert all(c.bias is None for c in convs)


def test_gmac_of_16x224_clip() -> None:
    # Meta tensors: the counter sees every conv and matmul with its shapes, no arithmetic is done.
    with torch.device("meta"):
        model = create_i3d_r50(_kinetics_cfg()).eval()
        clip = torch.empty(1, 3, 16, 224, 224)
    counter = FlopCounterMode(display=False)
    with counter:
        model(clip)
    gmac = counter.get_total_flops() / 2 / 1e9
    assert abs(gmac - 56.8) / 56.8 < 0.005, gmac


def test_module_names_and_kernels_follow_pytorchvideo() -> None:
    model = create_i3d_r50(_kinetics_cfg())
    keys = set(model.state_dict())
    for key in (
        "blocks.0.conv.weight",
        "blocks.0.norm.running_var",
        "blocks.1.res_blocks.0.branch1_conv.weight",
        "blocks.1.res_blocks.0.branch1_norm.bias",
        "blocks.3.res_blocks.3.branch2.conv_c.weight",
        "blocks.5.res_blocks.2.branch2.norm_b.running_mean",
        "blocks.6.proj.weight",
        "blocks.6.proj.bias",
    ):
        assert key in keys, key
    assert not any(k.startswith("blocks.2.") for k in keys)  # the pool after res2 has no state
    assert not any(k.startswith("blocks.1.res_blocks.1.branch1") for k in keys)

    stem = model.blocks[0]
    assert stem.conv.kernel_size == (5, 7, 7) and stem.conv.stride == (1, 2, 2) and stem.conv.padding == (2, 3, 3)
    assert stem.pool.kernel_size == (1, 3, 3) and stem.pool.stride == (1, 2, 2)
    pool2 = model.blocks[2]
    assert isinstance(pool2, nn.MaxPool3d) and pool2.kernel_size == (2, 1, 1) and pool2.stride == (2, 1, 1)
    for idx, kernels in PYTORCHVIDEO_CONV_A_T.items():
        blocks = model.blocks[idx].res_blocks
        assert [b.branch2.conv_a.kernel_size[0] for b in blocks] == kernels
        assert all(b.branch2.conv_b.kernel_size == (1, 3, 3) for b in blocks)
        first_stride = blocks[0].branch2.conv_b.stride
        assert first_stride == ((1, 1, 1) if idx == 1 else (1, 2, 2))
        assert blocks[0].branch1_conv.stride == first_stride
        assert all(b.branch2.conv_b.stride == (1, 1, 1) and b.branch1_conv is None for b in blocks[1:])
    assert model.blocks[6].proj.out_features == 400 and model.blocks[6].proj.in_features == 2048


def test_full_shapes_on_meta_device() -> None:
    with torch.device("meta"):
        model = create_i3d_r50(_kinetics_cfg()).eval()
        encoder = create_video_encoder(full_config().video)
        clip = torch.empty(1, 3, 16, 224, 224)
    assert model(clip).shape == (1, 400)
    assert model.forward_features(clip).shape == (1, 8, 2048)
    assert encoder(clip).shape == (1, 8, encoder.out_dim)
    assert encoder.out_dim == full_config().video.feature_dim == 2048


def test_full_encoder_real_forward() -> None:
    cfg = full_config().video
    encoder = create_video_encoder(cfg).eval()
    clip = torch.randn(1, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
    with torch.no_grad():  # about 3 s on one idle CPU core pair
        tokens = encoder(clip)
    assert tokens.shape == (1, res5_shape(cfg)[0], 2048)
    assert torch.isfinite(tokens).all()


def test_tiny_encoder_and_head_shapes() -> None:
    cfg = tiny_config().video
    encoder = create_video_encoder(cfg).eval()
    clip = torch.randn(2, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
    tokens = encoder(clip)
    t_out, s_out = res5_shape(cfg)
    assert (t_out, s_out) == (cfg.frames // 2, cfg.crop_size // 32)
    assert tokens.shape == (2, t_out, cfg.feature_dim) and encoder.out_dim == cfg.feature_dim
    # Tokens are the res5 map averaged over space: recompute it from the blocks directly.
    x = clip
    for block in encoder.backbone.blocks[:-1]:
        x = block(x)
    torch.testing.assert_close(tokens, x.mean(dim=(3, 4)).transpose(1, 2))

    with_head = create_i3d_r50(dataclasses.replace(cfg, num_classes=5)).eval()
    assert with_head(clip).shape == (2, 5)
    without_head = create_i3d_r50(cfg).eval()
    assert without_head(clip).shape == (2, cfg.feature_dim)


def test_batch_rows_are_independent_in_eval() -> None:
    cfg = tiny_config().video
    encoder = create_video_encoder(cfg).eval()
    clip = torch.randn(3, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
    with torch.no_grad():
        together = encoder(clip)
        alone = encoder(clip[1:2])
    torch.testing.assert_close(together[1:2], alone, rtol=1e-4, atol=1e-5)


def test_encoder_wraps_a_loaded_backbone_and_drops_its_head() -> None:
    cfg = dataclasses.replace(tiny_config().video, num_classes=7)
    backbone = create_i3d_r50(cfg).eval()
    clip = torch.randn(1, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
    expected = backbone.forward_features(clip)
    encoder = create_video_encoder(cfg, backbone=backbone)
    assert isinstance(encoder.backbone, I3DResNet)
    assert not any(k.startswith("backbone.blocks.6.proj") for k in encoder.state_dict())
    torch.testing.assert_close(encoder(clip), expected)
    # A fresh encoder never carries the classifier, whatever the config says.
    assert not any("proj" in k for k in create_video_encoder(cfg).state_dict())


@pytest.mark.parametrize(
    "change, field",
    [
        ({"temporal_kernels": ((3,), (3,), (3,), (1, 1))}, "temporal_kernels[3]"),
        ({"stage_depths": (1, 1, 1)}, "stage_depths"),
        ({"num_classes": -1}, "num_classes"),
        ({"temporal_kernels": ((2,), (3,), (3,), (1,))}, "temporal_kernel"),
    ],
)
def test_bad_config_is_named(change: dict, field: str) -> None:
    cfg = dataclasses.replace(tiny_config().video, **change)
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        create_i3d_r50(cfg)


# --- ONNX -----------------------------------------------------------------------------------------


def _export_and_compare(tmp_path, dynamo: bool) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    cfg = tiny_config().video
    encoder = create_video_encoder(cfg).eval()
    # Non-trivial BN statistics so that a wrongly folded norm shows in the comparison.
    with torch.no_grad():
        for m in encoder.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    example = torch.randn(2, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
    path = tmp_path / "video.onnx"
    kwargs: dict = {"input_names": ["clip"], "output_names": ["tokens"], "opset_version": 17}
    if dynamo:
        kwargs["dynamic_shapes"] = {"clip": {0: torch.export.Dim("batch")}}
    else:
        kwargs["dynamic_axes"] = {"clip": {0: "batch"}, "tokens": {0: "batch"}}
    torch.onnx.export(encoder, (example,), str(path), dynamo=dynamo, **kwargs)
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        clip = torch.randn(batch, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
        (got,) = session.run(None, {"clip": clip.numpy()})
        with torch.no_grad():
            want = encoder(clip).numpy()
        assert got.shape == want.shape == (batch, res5_shape(cfg)[0], cfg.feature_dim)
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


def test_onnx_export_tiny_encoder_opset17_dynamic_batch(tmp_path) -> None:
    _export_and_compare(tmp_path, dynamo=False)


@pytest.mark.slow
def test_onnx_dynamo_export_tiny_encoder_opset17_dynamic_batch(tmp_path) -> None:
    _export_and_compare(tmp_path, dynamo=True)


# --- pre-processing -------------------------------------------------------------------------------


def test_sample_frame_indices_uniform() -> None:
    idx = sample_frame_indices(32, 16)
    assert idx.shape == (16,) and idx.dtype == np.int64
    assert idx[0] == 0 and idx[-1] == 31
    steps = np.diff(idx)
    assert steps.min() >= 1 and steps.max() - steps.min() <= 1  # evenly spread, no repeats
    same = sample_frame_indices(16, 16)
    np.testing.assert_array_equal(same, np.arange(16))
    few = sample_frame_indices(3, 8)  # fewer frames than wanted: repeats, stays in range and ordered
    assert few.min() == 0 and few.max() == 2 and np.all(np.diff(few) >= 0)
    assert set(few.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(sample_frame_indices(1, 4), np.zeros(4, dtype=np.int64))


@pytest.mark.parametrize("n_available, n_wanted", [(0, 4), (4, 0), (-1, 3), (2.5, 2)])
def test_sample_frame_indices_rejects_bad_counts(n_available, n_wanted) -> None:
    with pytest.raises(ValueError, match="n_available|n_wanted"):
        sample_frame_indices(n_available, n_wanted)


def test_preprocess_clip_scales_normalises_and_resamples() -> None:
    cfg = tiny_config().video
    n = 20
    rng = np.random.default_rng(0)
    # Each frame a constant colour that encodes its index, so the chosen frames can be read back.
    values = rng.integers(0, 256, size=(n, 3)).astype(np.uint8)
    frames = np.broadcast_to(values[:, None, None, :], (n, 50, 70, 3)).copy()
    clip = preprocess_clip(frames, cfg)
    assert clip.dtype == torch.float32 and clip.shape == (3, cfg.frames, cfg.crop_size, cfg.crop_size)
    picked = sample_frame_indices(n, cfg.frames)
    mean, std = np.array(cfg.mean), np.array(cfg.std)
    expected = (values[picked] / 255.0 - mean) / std  # (frames, 3)
    np.testing.assert_allclose(clip[:, :, 10, 20].numpy().T, expected, rtol=1e-5, atol=1e-5)
    # A constant frame stays constant over space after resizing.
    assert torch.allclose(clip[:, 3], clip[:, 3, :1, :1].expand_as(clip[:, 3]), atol=1e-5)


def test_preprocess_clip_mmaction2_scale_and_area_resize() -> None:
    cfg = VideoConfig(
        frames=2, crop_size=4, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), pixel_scale=255.0
    )
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    clip = preprocess_clip(frames, cfg)
    # INTER_AREA halving = mean of each 2x2 block; then 0-255 minus mean, over std.
    blocks = frames.astype(np.float64).reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    expected = ((blocks - np.array(cfg.mean)) / np.array(cfg.std)).transpose(3, 0, 1, 2)
    np.testing.assert_allclose(clip.numpy(), expected, atol=0.02)


@pytest.mark.parametrize(
    "frames, pattern",
    [
        (np.zeros((4, 8, 8, 3), dtype=np.float32), "dtype"),
        (np.zeros((8, 8, 3), dtype=np.uint8), "4 dimensions"),
        (np.zeros((4, 8, 8, 4), dtype=np.uint8), "channels"),
        (np.zeros((4, 8, 8, 1), dtype=np.uint8), "channels"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "T \\(frames\\)"),
        (np.zeros((4, 0, 8, 3), dtype=np.uint8), "H \\(height\\)"),
        (np.zeros((4, 8, 0, 3), dtype=np.uint8), "W \\(width\\)"),
        ([[0]], "numpy array"),
    ],
)
def test_preprocess_clip_rejects_bad_input(frames, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        preprocess_clip(frames, tiny_config().video)


def test_preprocessed_clip_feeds_the_encoder() -> None:
    cfg = tiny_config().video
    frames = np.random.default_rng(2).integers(0, 256, size=(11, 90, 80, 3)).astype(np.uint8)
    clip = preprocess_clip(frames, cfg)
    tokens = create_video_encoder(cfg).eval()(clip.unsqueeze(0))
    assert tokens.shape == (1, res5_shape(cfg)[0], cfg.feature_dim) and torch.isfinite(tokens).all()


@pytest.mark.parametrize(
    "frames, crop, stem_t, pool_t",
    [(16, 224, 1, 1), (32, 224, 2, 2), (9, 71, 1, 1), (12, 100, 2, 1), (8, 33, 1, 2)],
)
def test_res5_shape_matches_the_network(frames: int, crop: int, stem_t: int, pool_t: int) -> None:
    cfg = dataclasses.replace(
        tiny_config().video, frames=frames, crop_size=crop, stem_stride_t=stem_t, stem_pool_stride_t=pool_t, num_classes=3
    )
    with torch.device("meta"):
        model = create_i3d_r50(cfg)
        clip = torch.empty(1, 3, frames, crop, crop)
        x = clip
        for block in model.blocks[:-1]:
            x = block(x)
        assert model(clip).shape == (1, 3)  # the head's pool fits the res5 map it derives from the config
    t_out, s_out = res5_shape(cfg)
    assert tuple(x.shape) == (1, cfg.feature_dim, t_out, s_out, s_out)
    assert model.blocks[6].pool.kernel_size == (min(4, t_out), s_out, s_out)
