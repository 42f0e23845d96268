"""ScoringEngines: ONNX Runtime and PyTorch give the same scores on real pre-processed windows; bad files
and bad inputs are clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bench import synthetic_raw_window
from models.configs import tiny_config
from models.engines.base import EngineError
from models.engines.runtime import ScoringEngines, stack_windows
from models.features.inputs import model_inputs
from models.manifest import MANIFEST_NAME, ManifestError

CFG = tiny_config()


def windows() -> list[dict[str, np.ndarray]]:
    """Pre-processed synthetic raw windows: all present, no face, no cry audio, no vitals."""
    base = [synthetic_raw_window(CFG, camera=(160, 120), seed=s) for s in range(4)]
    base[1] = dataclasses.replace(base[1], frames=None)
    base[2] = dataclasses.replace(base[2], audio=None)
    base[3] = dataclasses.replace(base[3], rr_ms=np.zeros(0), rr_times_s=np.zeros(0), spo2_pct=np.zeros(0), spo2_times_s=np.zeros(0))
    return [model_inputs(w, CFG) for w in base]


def test_onnxruntime_and_torch_give_the_same_scores(exported_tiny) -> None:
    model_dir, model = exported_tiny
    batch = stack_windows(windows())
    assert batch["presence"].tolist() == [[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0]]
    with ScoringEngines(model_dir, "onnxruntime") as ort_engines, ScoringEngines(model_dir, "torch") as torch_engines:
        assert ort_engines.providers == ["CPUExecutionProvider"]
        assert ort_engines.model_version == torch_engines.model_version
        a, b = ort_engines.run(batch), torch_engines.run(batch)
        single = ort_engines.run(stack_windows(windows()[:1]))
    for name in ("nips", "item_logits", "modality_weights"):
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-4)
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    np.testing.assert_allclose(a.nips, reference[0].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(single.nips, a.nips[:1], rtol=0, atol=1e-5)  # batch does not change a score
    assert a.modality_weights[1, 0] == 0.0 and a.modality_weights[3, 2] == 0.0  # absent -> weight 0
    assert ((a.nips >= 0) & (a.nips <= 7)).all()
    assert set(a.timings_ms) == {"video_encoder", "audio_encoder", "vitals_encoder", "fusion", "total"}
    assert a.timings_ms["total"] >= a.timings_ms["video_encoder"] > 0


def test_inputs_are_checked_by_name_and_shape(exported_tiny) -> None:
    model_dir, _ = exported_tiny
    batch = stack_windows(windows()[:2])
    with ScoringEngines(model_dir, "onnxruntime") as engines:
        with pytest.raises(EngineError, match=r"missing \['hrv'\]"):
            engines.run({k: v for k, v in batch.items() if k != "hrv"})
        with pytest.raises(EngineError, match="'clip' has shape"):
            engines.run({**batch, "clip": batch["clip"][0]})  # no batch dimension
        with pytest.raises(EngineError, match="'presence' has batch 1"):
            engines.run({**batch, "presence": batch["presence"][:1]})


def test_corrupted_onnx_file_is_a_clear_error(model_copy: Path) -> None:
    path = model_copy / "fusion.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="fusion.onnx of part 'fusion' is corrupted"):
        ScoringEngines(model_copy, "onnxruntime")


def test_unparsable_onnx_with_matching_manifest_is_a_clear_error(model_copy: Path) -> None:
    """A file that is not ONNX at all (even if the manifest was regenerated for it) fails at load, cleanly."""
    from models.engines.cache import sha256_file

    path = model_copy / "vitals_encoder.onnx"
    path.write_bytes(b"\x00garbage" * 100)
    manifest = json.loads((model_copy / MANIFEST_NAME).read_text())
    manifest["parts"]["vitals_encoder"]["sha256"] = sha256_file(path)
    (model_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="ONNX Runtime cannot load .*vitals_encoder.onnx"):
        ScoringEngines(model_copy, "onnxruntime")


def test_missing_and_malformed_manifest(model_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="does not exist: export the model"):
        ScoringEngines(tmp_path / "nowhere", "onnxruntime")
    manifest_path = model_copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        ScoringEngines(model_copy, "onnxruntime")
    del manifest["parts"]["fusion"]["sha256"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="parts.fusion: key 'sha256' is missing"):
        ScoringEngines(model_copy, "torch")


def test_other_preprocessing_is_refused(model_copy: Path) -> None:
    manifest_path = model_copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["preprocessing"]["audio"]["log_offset"] = 1e-6
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"preprocessing.audio.log_offset: manifest 1e-06 vs code 0.01"):
        ScoringEngines(model_copy, "onnxruntime")


def test_torch_backend_refuses_weights_of_another_version(model_copy: Path) -> None:
    path = model_copy / "estimator.pt"
    data = torch.load(path, weights_only=True)
    data["model_version"] = "neopain-tiny-000000000000"
    torch.save(data, path)
    with pytest.raises(EngineError, match="holds model 'neopain-tiny-000000000000'"):
        ScoringEngines(model_copy, "torch")


def test_unknown_backend(exported_tiny) -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        ScoringEngines(exported_tiny[0], "openvino")
