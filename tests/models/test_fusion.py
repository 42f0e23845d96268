"""Cross-modal fusion on random token tensors: presence handling, weights, ranges, dropout."""

from __future__ import annotations

import itertools

import pytest
import torch

from models.configs import MODALITIES, NIPS_MAX, tiny_config
from models.fusion import (
    ITEM_LOGITS,
    MASK_VALUE,
    create_cross_modal_block,
    create_fusion,
    masked_mean,
    modality_dropout,
)

CFG = tiny_config()
DIMS = (64, 32, 48)  # video, audio, vitals token widths (deliberately all different)
LENS = (2, 4, 16)
SUBSETS = [p for p in itertools.product((0.0, 1.0), repeat=3) if any(p)]



def tokens(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(batch, LENS[1], dtype=torch.bool)
    pad[0, 2:] = True
    return {
        "video_tokens": torch.randn(batch, LENS[0], DIMS[0], generator=g),
        "audio_tokens": torch.randn(batch, LENS[1], DIMS[1], generator=g),
        "audio_pad_mask": pad,
        "vitals_tokens": torch.randn(batch, LENS[2], DIMS[2], generator=g),
    }


@pytest.fixture(scope="module")
def fusion() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_fusion(CFG, *DIMS).eval()


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda p: "".join(m[0] for m, x in zip(MODALITIES, p) if x))
def test_outputs_for_every_presence_subset(fusion, subset) -> None:
    x = tokens()
    presence = torch.tensor([subset] * 3)
    with torch.no_grad():
        nips, items, weights = fusion(**x, presence=presence)
    assert nips.shape == (3,) and items.shape == (3, ITEM_LOGITS) == (3, 13) and weights.shape == (3, 3)
    for t in (nips, items, weights):
        assert torch.isfinite(t).all()
    assert ((nips >= 0) & (nips <= NIPS_MAX)).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    absent = presence == 0
    assert (weights[absent] == 0).all()
    assert (weights[~absent] > 0).all()


@pytest.mark.parametrize(
    "subset", [p for p in SUBSETS if not all(p)], ids=lambda p: "".join(m[0] for m, x in zip(MODALITIES, p) if x)
)
def test_absent_modalities_do_not_influence_outputs(fusion, subset) -> None:
    x = tokens()
    presence = torch.tensor([subset] * 3)
    garbage = dict(x)
    g = torch.Generator().manual_seed(99)
    for m, key in enumerate(("video_tokens", "audio_tokens", "vitals_tokens")):
        if not subset[m]:
            garbage[key] = 1e3 * torch.randn(x[key].shape, generator=g)
    if not subset[1]:
        garbage["audio_pad_mask"] = torch.rand(x["audio_pad_mask"].shape, generator=g) > 0.5
    with torch.no_grad():
        ref = fusion(**x, presence=presence)
        got = fusion(**garbage, presence=presence)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_absent_modality_may_even_hold_nan(fusion) -> None:
    x = tokens()
    x["video_tokens"] = torch.full_like(x["video_tokens"], float("nan"))
    with torch.no_grad():
        out = fusion(**x, presence=torch.tensor([[0.0, 1.0, 1.0]] * 3))
    assert all(torch.isfinite(t).all() for t in out)


def test_padded_audio_tokens_do_not_influence_outputs(fusion) -> None:
    x = tokens()
    y = dict(x)
    y["audio_tokens"] = x["audio_tokens"].clone()
    y["audio_tokens"][0, 2:] = 1e3  # row 0 pads patches 2-3
    presence = torch.ones(3, 3)
    with torch.no_grad():
        for a, b in zip(fusion(**x, presence=presence), fusion(**y, presence=presence)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_present_modalities_do_influence_outputs(fusion) -> None:
    """The counterpart of the independence test: the fusion is not ignoring its inputs."""
    x = tokens()
    presence = torch.ones(3, 3)
    with torch.no_grad():
        ref = fusion(**x, presence=presence)
        for key in ("video_tokens", "audio_tokens", "vitals_tokens"):
            y = dict(x)
            y[key] = x[key] + torch.randn_like(x[key])
            changed = fusion(**y, presence=presence)
            assert not torch.allclose(ref[0], changed[0], atol=1e-5), key


def test_fully_padded_present_audio_row_is_finite(fusion) -> None:
    x = tokens()
    x["audio_pad_mask"][:] = True
    with torch.no_grad():
        out = fusion(**x, presence=torch.ones(3, 3))
    assert all(torch.isfinite(t).all() for t in out)


def test_no_modality_present_is_still_finite(fusion) -> None:
    with torch.no_grad():
        out = fusion(**tokens(), presence=torch.zeros(3, 3))
    assert all(torch.isfinite(t).all() for t in out)


def test_gradients_are_finite_with_modalities_missing() -> None:
    torch.manual_seed(1)
    fusion = create_fusion(CFG, *DIMS).train()
    x = tokens(batch=len(SUBSETS))
    presence = torch.tensor(SUBSETS)
    nips, items, _ = fusion(**x, presence=presence)
    (nips.sum() + items.square().mean()).backward()
    for name, p in fusion.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert fusion.null_tokens.grad.abs().sum() > 0


def test_modality_dropout_never_empties_a_row_and_only_drops() -> None:
    torch.manual_seed(0)
    presence = torch.tensor(SUBSETS * 200)
    kept = modality_dropout(presence, 0.9)
    assert ((kept <= presence)).all()
    assert (kept.sum(dim=1) >= 1).all()
    assert (kept != presence).any()  # with p=0.9 something was dropped
    assert torch.equal(modality_dropout(presence, 0.0), presence)


def test_training_mode_applies_modality_dropout() -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    fusion = create_fusion(cfg, *DIMS).train()
    x = tokens(batch=3)
    x = {k: v.repeat(64, *([1] * (v.dim() - 1))) for k, v in x.items()}
    presence = torch.ones(x["video_tokens"].shape[0], 3)
    _, _, weights = fusion(**x, presence=presence)
    hidden = weights == 0
    assert hidden.any(), "modality dropout never hid a modality in training"
    assert (hidden.sum(dim=1) < 3).all()
    fusion.eval()
    with torch.no_grad():
        _, _, weights = fusion(**x, presence=presence)
    assert (weights > 0).all()


def test_mask_value_is_finite_in_fp16() -> None:
    half = torch.tensor(MASK_VALUE, dtype=torch.float16)
    assert torch.isfinite(half) and torch.isfinite(half + half * 0 - half)
    # and large enough that softmax gives a masked key exactly zero weight in fp32
    assert torch.softmax(torch.tensor([0.0, MASK_VALUE]), 0)[1] == 0.0


def test_cross_modal_block_queries_target_length() -> None:
    block = create_cross_modal_block(32, 2, 0.0).eval()
    target, source = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    mask = torch.zeros(2, 7)
    mask[:, 1:] = MASK_VALUE  # only key 0 visible
    out = block(target, source, mask)
    assert out.shape == target.shape and torch.isfinite(out).all()
    # Hidden keys do not matter.
    source2 = source.clone()
    source2[:, 1:] = torch.randn(2, 6, 32)
    torch.testing.assert_close(out, block(target, source2, mask))


def test_masked_mean() -> None:
    x = torch.arange(12.0).reshape(1, 4, 3)
    keep = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    torch.testing.assert_close(masked_mean(x, keep), (x[0, 0] + x[0, 2])[None] / 2)
    assert torch.equal(masked_mean(x, torch.zeros(1, 4)), torch.zeros(1, 3))


def test_bad_shapes_raise_naming_the_input(fusion) -> None:
    x = tokens()
    with pytest.raises(ValueError, match="presence"):
        fusion(**x, presence=torch.ones(3, 2))
    with pytest.raises(ValueError, match="audio_pad_mask"):
        fusion(**{**x, "audio_pad_mask": torch.zeros(3, 5, dtype=torch.bool)}, presence=torch.ones(3, 3))
    with pytest.raises(ValueError, match="vitals_tokens"):
        fusion(**{**x, "vitals_tokens": torch.randn(3, 16, 7)}, presence=torch.ones(3, 3))


def test_item_head_can_be_switched_off() -> None:
    import dataclasses

    cfg = dataclasses.replace(CFG, fusion=dataclasses.replace(CFG.fusion, item_logits=False))
    fusion = create_fusion(cfg, *DIMS).eval()
    with torch.no_grad():
        nips, items, _ = fusion(**tokens(), presence=torch.ones(3, 3))
    assert items.shape == (3, ITEM_LOGITS) and not items.any()
    assert torch.isfinite(nips).all()
