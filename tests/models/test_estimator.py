"""The full estimator and the baselines: shapes, presence semantics, and that the model can learn."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.configs import MODALITIES, NIPS_MAX, full_config, get_config, small_config, tiny_config
from models.estimator import (
    BASELINES,
    INPUT_NAMES,
    PainEstimator,
    audio_token_padding,
    create_baseline,
    create_pain_estimator,
    example_inputs,
)
from models.fusion import ITEM_LOGITS

CFG = tiny_config()



def check_outputs(outputs: tuple[torch.Tensor, ...], batch: int) -> None:
    nips, items, weights = outputs
    assert nips.shape == (batch,) and items.shape == (batch, ITEM_LOGITS) and weights.shape == (batch, 3)
    assert all(torch.isfinite(t).all() for t in outputs)
    assert ((nips >= 0) & (nips <= NIPS_MAX)).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(batch))


def test_example_inputs_shapes_and_padding() -> None:
    x = example_inputs(CFG, batch=3)
    assert tuple(x) == INPUT_NAMES
    a, v, t = CFG.audio, CFG.video, CFG.vitals
    assert x["clip"].shape == (3, 3, v.frames, v.crop_size, v.crop_size)
    assert x["audio_patches"].shape == (3, a.max_patches, 96, 64)
    assert x["audio_pad_mask"].dtype == torch.bool
    assert x["audio_pad_mask"].sum(dim=1).tolist() == [0, 1, 2]
    assert x["vitals_series"].shape == (3, t.in_channels, t.samples)
    assert set(x["vitals_series"][:, 1::2].unique().tolist()) <= {0.0, 1.0}
    assert x["hrv"].shape == (3, t.hrv_features) and x["presence"].shape == (3, 3)
    with pytest.raises(ValueError, match="batch"):
        example_inputs(CFG, batch=0)


def test_estimator_forward_tiny() -> None:
    torch.manual_seed(0)
    model = create_pain_estimator(CFG).eval()
    assert isinstance(model, PainEstimator)
    with torch.no_grad():
        check_outputs(model(**example_inputs(CFG, batch=2)), 2)


def test_small_config_is_the_full_topology_at_smaller_widths() -> None:
    """``small`` answers whether capacity limits the model: the same blocks, kernels and layer counts as
    ``full``, narrower and on a smaller crop, and it runs end to end."""
    small, full = small_config(), full_config()
    assert get_config("small") == small
    for part in ("video", "audio", "fusion"):
        s, f = getattr(small, part), getattr(full, part)
        differs = {k for k in dataclasses.asdict(f) if getattr(s, k) != getattr(f, k)}
        assert differs <= {"crop_size", "stem_dim", "stage_widths", "vggish_channels", "vggish_fc", "embedding_dim",
                           "transformer_dim", "transformer_ff", "dim", "modality_dropout"}, (part, differs)
    torch.manual_seed(0)
    model = create_pain_estimator(small).eval()
    n_small = sum(p.numel() for p in model.parameters())
    n_tiny = sum(p.numel() for p in create_pain_estimator(CFG).parameters())
    assert 5 * n_tiny < n_small < 10_000_000
    with torch.no_grad():
        check_outputs(model(**example_inputs(small, batch=2)), 2)


def test_estimator_ignores_absent_modality_inputs() -> None:
    torch.manual_seed(0)
    model = create_pain_estimator(CFG).eval()
    x = example_inputs(CFG, batch=2)
    x["presence"] = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    y = dict(x)
    y["clip"] = 5.0 * torch.randn_like(x["clip"])
    y["audio_patches"] = x["audio_patches"].clone()
    y["audio_patches"][1] = 10.0  # row 1 has no audio
    with torch.no_grad():
        ref, got = model(**x), model(**y)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert (ref[2][:, 0] == 0).all() and ref[2][1, 1] == 0


@pytest.mark.parametrize("kind", BASELINES)
def test_baseline_forward_and_weights(kind: str) -> None:
    torch.manual_seed(0)
    model = create_baseline(kind, CFG).eval()
    x = example_inputs(CFG, batch=2)
    x["presence"] = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    with torch.no_grad():
        outputs = model(**x)
    check_outputs(outputs, 2)
    weights = outputs[2]
    if kind == "early":
        torch.testing.assert_close(weights, torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5]]))
    else:
        expected = torch.zeros(2, 3)
        expected[:, MODALITIES.index(kind)] = 1.0
        assert torch.equal(weights, expected)


def test_early_fusion_ignores_absent_modality_inputs() -> None:
    torch.manual_seed(0)
    model = create_baseline("early", CFG).eval()
    x = example_inputs(CFG, batch=2)
    x["presence"] = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    y = {**x, "audio_patches": torch.randn_like(x["audio_patches"]) * 3}
    with torch.no_grad():
        for a, b in zip(model(**x), model(**y)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        z = {**x, "clip": torch.randn_like(x["clip"])}  # a present modality does matter
        assert not torch.allclose(model(**x)[0], model(**z)[0], atol=1e-6)


def test_unknown_baseline_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline kind"):
        create_baseline("late", CFG)


def test_audio_token_padding_handles_a_leading_summary_token() -> None:
    pad = torch.tensor([[False, True, True]])
    assert torch.equal(audio_token_padding(torch.zeros(1, 3, 4), pad), pad)
    assert audio_token_padding(torch.zeros(1, 4, 4), pad).tolist() == [[False, False, True, True]]
    with pytest.raises(ValueError, match="tokens"):
        audio_token_padding(torch.zeros(1, 2, 4), pad)


@pytest.mark.slow
def test_overfits_a_few_samples() -> None:
    """L1 + AdamW on 8 fixed random samples: the loss must drop at least 10x (the model can learn).

    Dropout and modality dropout are switched off so the objective is deterministic; BatchNorm stays
    in training mode, and the final loss is measured in that same mode on the same batch.
    """
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        CFG,
        audio=dataclasses.replace(CFG.audio, dropout=0.0),
        vitals=dataclasses.replace(CFG.vitals, dropout=0.0),
        fusion=dataclasses.replace(CFG.fusion, dropout=0.0, modality_dropout=0.0),
    )
    model = create_pain_estimator(cfg).train()
    x = example_inputs(cfg, batch=8, seed=1)
    target = torch.rand(8, generator=torch.Generator().manual_seed(2)) * NIPS_MAX
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    with torch.no_grad():
        initial = F.l1_loss(model(**x)[0], target).item()
    for _ in range(40):
        loss = F.l1_loss(model(**x)[0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        final = F.l1_loss(model(**x)[0], target).item()
    assert initial > 0.5
    assert final < initial / 10, (initial, final)


@pytest.mark.slow
def test_estimator_forward_full_config() -> None:
    torch.manual_seed(0)
    cfg = full_config()
    model = create_pain_estimator(cfg).eval()
    x = example_inputs(cfg, batch=1)
    with torch.no_grad():
        outputs = model(**x)
    check_outputs(outputs, 1)
    params = sum(p.numel() for p in model.parameters())
    assert params > 90_000_000  # I3D-R50 trunk (~24 M) + VGGish (~72 M) + transformer + fusion
