"""VGGish + cry transformer: sizes, the padding contract, and ONNX export."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.audio import create_audio_encoder, create_cry_transformer, create_vggish
from models.configs import AudioConfig, full_config, tiny_config

TINY = tiny_config().audio
FULL = full_config().audio


def _expected_vggish_params(cfg: AudioConfig) -> int:
    """Parameter count from the architecture description: conv3x3 stages, then three fc layers."""
    widths = [1, cfg.vggish_channels[0], cfg.vggish_channels[1], cfg.vggish_channels[2], cfg.vggish_channels[2], cfg.vggish_channels[3], cfg.vggish_channels[3]]
    convs = sum(cin * cout * 9 + cout for cin, cout in zip(widths[:-1], widths[1:]))
    flat = cfg.vggish_channels[3] * (cfg.patch_frames // 16) * (cfg.mel_bands // 16)
    fcs = [flat, cfg.vggish_fc, cfg.vggish_fc, cfg.embedding_dim]
    return convs + sum(i * o + o for i, o in zip(fcs[:-1], fcs[1:]))


def test_full_vggish_size_and_compute() -> None:
    # On the meta device: shapes, parameter counts and FLOPs without allocating 290 MB of weights.
    with torch.device("meta"):
        vggish = create_vggish(FULL)
        n_params = sum(p.numel() for p in vggish.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            out = vggish(torch.zeros(1, 1, 96, 64))
    assert n_params == _expected_vggish_params(FULL)
    assert abs(n_params - 72.1e6) / 72.1e6 < 0.005  # published 72.1 M
    assert out.shape == (1, 128)
    gmac = counter.get_total_flops() / 2 / 1e9
    assert abs(gmac - 0.864) < 0.005  # published 0.864 GMAC per example


def test_vggish_key_names_follow_torchvggish() -> None:
    keys = set(create_vggish(TINY).state_dict())
    expected = {f"features.{i}.{p}" for i in (0, 3, 6, 8, 11, 13) for p in ("weight", "bias")}
    expected |= {f"embeddings.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert keys == expected


def test_vggish_flattens_channels_last() -> None:
    """The first fc must read the conv map in NHWC order, as the TensorFlow-trained weights expect."""
    vggish = create_vggish(TINY).eval()
    x = torch.randn(2, 1, 96, 64)
    with torch.no_grad():
        conv = vggish.features(x)
        nhwc = vggish.embeddings(conv.permute(0, 2, 3, 1).reshape(2, -1))
        nchw = vggish.embeddings(conv.reshape(2, -1))
        out = vggish(x)
    torch.testing.assert_close(out, nhwc)
    assert not torch.allclose(out, nchw)


@pytest.mark.parametrize("cfg", [TINY, FULL], ids=["tiny", "full"])
def test_encoder_shapes(cfg: AudioConfig) -> None:
    # The full size runs on the meta device (shapes only); the tiny one computes real values.
    device = torch.device("meta" if cfg is FULL else "cpu")
    with device:
        encoder = create_audio_encoder(cfg).eval()
    assert encoder.out_dim == cfg.transformer_dim
    b, n = 2, cfg.max_patches
    mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    mask[1, n // 2 :] = True
    with torch.no_grad():
        tokens = encoder(torch.randn(b, n, 96, 64, device=device), mask)
    assert tokens.shape == (b, n, cfg.transformer_dim)
    if device.type == "cpu":
        assert torch.isfinite(tokens).all()
    with device:
        # Fewer slots than max_patches are fine; more are refused.
        with torch.no_grad():
            assert encoder(torch.randn(1, 1, 96, 64), torch.zeros(1, 1, dtype=torch.bool)).shape == (1, 1, cfg.transformer_dim)
        with pytest.raises(ValueError, match="max_patches"):
            encoder(torch.randn(1, n + 1, 96, 64), torch.zeros(1, n + 1, dtype=torch.bool))


def test_encoder_rejects_bad_inputs() -> None:
    encoder = create_audio_encoder(TINY)
    with pytest.raises(ValueError, match="patches"):
        encoder(torch.randn(1, 2, 64, 96), torch.zeros(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        encoder(torch.randn(1, 2, 96, 64), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="pad_mask"):
        encoder(torch.randn(1, 2, 96, 64), torch.zeros(1, 3, dtype=torch.bool))


@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no_grad_fastpath"])
def test_padded_content_cannot_change_outputs(grad: bool) -> None:
    """Valid tokens of a row depend only on its valid patches; a fully padded row stays finite.

    Checked both with autograd on and under no_grad in eval, where PyTorch may take its fused
    transformer fast path.
    """
    encoder = create_audio_encoder(TINY).eval()
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    a = torch.randn(2, 4, 96, 64)
    b = a.clone()
    b[mask] = torch.randn(int(mask.sum()), 96, 64) * 50.0
    b[1] = float("nan")  # whatever sits in padding, even NaN
    with torch.set_grad_enabled(grad):
        out_a, out_b = encoder(a, mask), encoder(b, mask)
    assert torch.isfinite(out_a).all() and torch.isfinite(out_b).all()
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    # And the valid patches do matter.
    c = a.clone()
    c[0, 0] += 1.0
    with torch.set_grad_enabled(grad):
        out_c = encoder(c, mask)
    assert not torch.allclose(out_a[0, :2], out_c[0, :2])


def test_fully_padded_row_trains_without_nan() -> None:
    encoder = create_audio_encoder(TINY).train()
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 0] = False
    tokens = encoder(torch.randn(2, 4, 96, 64), mask)
    tokens[~mask].sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_transformer_is_prenorm_without_nested_tensors() -> None:
    cry = create_cry_transformer(TINY)
    assert cry.encoder.use_nested_tensor is False
    assert all(layer.norm_first for layer in cry.encoder.layers)
    assert cry.pos_embed.shape == (1, TINY.max_patches + 1, TINY.transformer_dim)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*axis name.*:UserWarning")
def test_onnx_export_matches_pytorch(tmp_path) -> None:
    encoder = create_audio_encoder(TINY).eval()
    n = TINY.max_patches
    example = (torch.randn(2, n, 96, 64), torch.zeros(2, n, dtype=torch.bool))
    batch = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "audio.onnx"
    torch.onnx.export(
        encoder,
        example,
        str(path),
        input_names=["patches", "pad_mask"],
        output_names=["tokens"],
        opset_version=17,
        dynamic_shapes={"patches": {0: batch}, "pad_mask": {0: batch}},
    )
    model = onnx.load(str(path))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for b in (1, 2):
        patches = rng.normal(size=(b, n, 96, 64)).astype(np.float32)
        mask = np.zeros((b, n), dtype=bool)
        mask[-1, n // 2 :] = True
        if b == 2:
            mask[0, :] = True  # a fully padded row through the engine too
        (tokens,) = session.run(None, {"patches": patches, "pad_mask": mask})
        with torch.no_grad():
            ref = encoder(torch.from_numpy(patches), torch.from_numpy(mask)).numpy()
        assert tokens.shape == ref.shape == (b, n, TINY.transformer_dim)
        assert np.isfinite(tokens).all()
        np.testing.assert_allclose(tokens, ref, atol=1e-3, rtol=0)
