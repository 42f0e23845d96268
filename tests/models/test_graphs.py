"""The four exportable parts of the estimator run in sequence equal the estimator."""

from __future__ import annotations

import pytest
import torch

from models.configs import tiny_config
from models.estimator import INPUT_NAMES, OUTPUT_NAMES, create_baseline, create_pain_estimator, example_inputs
from models.graphs import PART_NAMES, part_inputs, run_parts, split_estimator

CFG = tiny_config()


def with_missing(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    x = dict(x)
    presence = torch.ones_like(x["presence"])
    presence[1] = torch.tensor([0.0, 1.0, 1.0])
    presence[2] = torch.tensor([1.0, 0.0, 0.0])
    x["presence"] = presence
    return x


def test_parts_in_sequence_equal_the_estimator() -> None:
    model = create_pain_estimator(CFG).eval()
    parts = split_estimator(model)
    assert list(parts) == list(PART_NAMES)
    x = with_missing(example_inputs(CFG, batch=3, seed=4))
    values = run_parts(parts, x)
    with torch.no_grad():
        reference = model(**x)
    for name, want in zip(OUTPUT_NAMES, reference):
        torch.testing.assert_close(values[name], want, rtol=0, atol=1e-6)
    assert values["audio_token_mask"].dtype == torch.bool
    assert torch.equal(values["audio_token_mask"], x["audio_pad_mask"])  # one token per patch


def test_every_name_is_produced_before_it_is_consumed() -> None:
    parts = split_estimator(create_pain_estimator(CFG).eval())
    known = set(INPUT_NAMES)
    for part in parts.values():
        assert set(part.input_names) <= known, part
        known |= set(part.output_names)
    assert set(OUTPUT_NAMES) <= known
    # every model input is read by some part
    assert set(INPUT_NAMES) <= {n for p in parts.values() for n in p.input_names}


def test_part_inputs_shapes() -> None:
    parts = split_estimator(create_pain_estimator(CFG).eval())
    inputs = part_inputs(parts, example_inputs(CFG, batch=2))
    assert inputs["video_encoder"]["clip"].shape == (2, 3, CFG.video.frames, CFG.video.crop_size, CFG.video.crop_size)
    assert list(inputs["fusion"]) == list(parts["fusion"].input_names)
    assert inputs["fusion"]["vitals_tokens"].shape[0] == 2


def test_split_keeps_the_models_mode_and_weights_are_shared() -> None:
    """Regression: a wrapper created in training mode switched the shared estimator into training."""
    model = create_pain_estimator(CFG).eval()
    parts = split_estimator(model)
    run_parts(parts, example_inputs(CFG, batch=2))
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        model.fusion.nips_head.bias.add_(1.0)
    assert parts["fusion"].module.fusion.nips_head.bias is model.fusion.nips_head.bias


def test_split_rejects_a_baseline() -> None:
    with pytest.raises(TypeError, match="PainEstimator"):
        split_estimator(create_baseline("early", CFG))


def test_run_parts_names_missing_inputs() -> None:
    parts = split_estimator(create_pain_estimator(CFG).eval())
    x = example_inputs(CFG)
    del x["hrv"]
    with pytest.raises(ValueError, match="hrv"):
        run_parts(parts, x)
