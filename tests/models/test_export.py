"""ONNX export of the estimator, the fusion head, the vitals encoder and the baselines; ORT parity."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from models.configs import tiny_config
from models.estimator import BASELINES, OUTPUT_NAMES, create_baseline, create_pain_estimator, example_inputs
from models.export import export_onnx, onnx_parity
from models.fusion import create_fusion
from models.vitals import create_vitals_encoder

CFG = tiny_config()
TOLERANCE = 1e-3



def randomise_batchnorm(module: torch.nn.Module) -> None:
    """Non-trivial running statistics so that a wrongly folded BatchNorm shows in the parity."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def opset_of(path: Path) -> int:
    return {o.domain: o.version for o in onnx.load(str(path)).opset_import}.get("", 0)


def batch_is_dynamic(path: Path) -> bool:
    model = onnx.load(str(path))
    return all(i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input)


def fusion_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pad = torch.zeros(batch, 4, dtype=torch.bool)
    pad[-1, 2:] = True
    presence = torch.ones(batch, 3)
    presence[-1, 0] = 0.0  # last row: no video
    return {
        "video_tokens": torch.randn(batch, 2, 64, generator=g),
        "audio_tokens": torch.randn(batch, 4, 32, generator=g),
        "audio_pad_mask": pad,
        "vitals_tokens": torch.randn(batch, 16, 32, generator=g),
        "presence": presence,
    }


def with_missing_modalities(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    x = dict(x)
    presence = torch.ones_like(x["presence"])
    presence[-1] = torch.tensor([0.0, 1.0, 0.0])  # last row: audio only
    x["presence"] = presence
    return x


def test_export_estimator_parity_at_batch_1_and_2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_pain_estimator(CFG)
    randomise_batchnorm(model)
    model.train()
    path = export_onnx(model, example_inputs(CFG, batch=2), tmp_path / "estimator.onnx")
    assert model.training, "export must restore the training flag"
    assert opset_of(path) == 17 and batch_is_dynamic(path)
    assert [o.name for o in onnx.load(str(path)).graph.output] == list(OUTPUT_NAMES)
    for batch in (1, 2):
        x = with_missing_modalities(example_inputs(CFG, batch=batch, seed=10 + batch))
        assert onnx_parity(model, path, x) < TOLERANCE


def test_export_fusion_head_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fusion = create_fusion(CFG, 64, 32, 32)
    path = export_onnx(fusion, fusion_inputs(2), tmp_path / "fusion.onnx")
    assert opset_of(path) == 17 and batch_is_dynamic(path)
    for batch in (1, 2, 3):
        assert onnx_parity(fusion, path, fusion_inputs(batch, seed=batch)) < TOLERANCE


def test_export_vitals_encoder_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = create_vitals_encoder(CFG.vitals)
    randomise_batchnorm(encoder)
    x = {"series": torch.randn(2, 4, CFG.vitals.samples), "hrv": torch.randn(2, 3)}
    path = export_onnx(encoder, x, tmp_path / "vitals.onnx", output_names=["tokens"])
    assert opset_of(path) == 17 and batch_is_dynamic(path)
    for batch in (1, 2):
        y = {"series": torch.randn(batch, 4, CFG.vitals.samples), "hrv": torch.randn(batch, 3)}
        assert onnx_parity(encoder, path, y) < TOLERANCE


@pytest.mark.parametrize("kind", BASELINES)
def test_export_baseline_parity(tmp_path: Path, kind: str) -> None:
    torch.manual_seed(0)
    model = create_baseline(kind, CFG)
    randomise_batchnorm(model)
    path = export_onnx(model, example_inputs(CFG, batch=2), tmp_path / f"{kind}.onnx")
    assert opset_of(path) == 17
    for batch in (1, 2):
        x = with_missing_modalities(example_inputs(CFG, batch=batch, seed=20 + batch))
        assert onnx_parity(model, path, x) < TOLERANCE


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:.*axis name.*:UserWarning")
def test_dynamo_exporter_path(tmp_path: Path) -> None:
    """The torch.export-based exporter is kept working for when the legacy one is removed."""
    torch.manual_seed(0)
    encoder = create_vitals_encoder(CFG.vitals)
    x = {"series": torch.randn(2, 4, CFG.vitals.samples), "hrv": torch.randn(2, 3)}
    path = export_onnx(encoder, x, tmp_path / "vitals_dynamo.onnx", dynamo=True)
    assert opset_of(path) == 17
    for batch in (1, 3):
        y = {"series": torch.randn(batch, 4, CFG.vitals.samples), "hrv": torch.randn(batch, 3)}
        assert onnx_parity(encoder, path, y) < TOLERANCE


def test_parity_detects_a_different_model(tmp_path: Path) -> None:
    """The parity number is a real comparison: another model's weights give a large error."""
    torch.manual_seed(0)
    encoder = create_vitals_encoder(CFG.vitals).eval()
    x = {"series": torch.randn(2, 4, CFG.vitals.samples), "hrv": torch.randn(2, 3)}
    path = export_onnx(encoder, x, tmp_path / "vitals.onnx")
    other = create_vitals_encoder(CFG.vitals).eval()
    assert onnx_parity(other, path, x) > 1e-2


def test_bad_arguments(tmp_path: Path) -> None:
    encoder = create_vitals_encoder(CFG.vitals)
    x = {"series": torch.randn(1, 4, CFG.vitals.samples), "hrv": torch.randn(1, 3)}
    with pytest.raises(ValueError, match="example_inputs"):
        export_onnx(encoder, {}, tmp_path / "a.onnx")
    with pytest.raises(TypeError, match="hrv"):
        export_onnx(encoder, {"series": x["series"], "hrv": [0.0, 0.0, 0.0]}, tmp_path / "a.onnx")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(encoder, x, tmp_path / "a.onnx", opset=13)
    path = export_onnx(encoder, x, tmp_path / "v.onnx")
    with pytest.raises(ValueError, match="hrv"):
        onnx_parity(encoder, path, {"series": x["series"]})
