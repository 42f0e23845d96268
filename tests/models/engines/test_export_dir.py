"""`neopain export`: four ONNX parts with parity, estimator.pt and a manifest; loud failures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnx
import pytest
import torch

from models.configs import tiny_config
from models.engines.cache import sha256_file
from models.estimator import create_pain_estimator
from models.export import (
    PARITY_TOLERANCE,
    ExportError,
    add_export_arguments,
    export_model_dir,
    load_estimator_checkpoint,
    model_version,
    run_export,
)
from models.graphs import PART_NAMES, split_estimator
from models.manifest import MANIFEST_NAME, preprocessing_constants, read_manifest

CFG = tiny_config()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return parser.parse_args(argv)


def test_every_part_is_exported_with_parity(exported_tiny) -> None:
    model_dir, model = exported_tiny
    manifest = read_manifest(model_dir)
    assert list(manifest.parts) == list(PART_NAMES)
    parts = split_estimator(model)
    for name, info in manifest.parts.items():
        path = model_dir / info.onnx
        assert info.sha256 == sha256_file(path)
        assert 0.0 <= info.parity_max_abs_error < PARITY_TOLERANCE
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == list(parts[name].input_names)
        assert [o.name for o in graph.output] == list(parts[name].output_names)
        for tensor in graph.input:  # dynamic batch, fixed everything else
            dims = tensor.type.tensor_type.shape.dim
            assert dims[0].dim_param and all(d.dim_value > 0 for d in dims[1:])
        assert [t.name for t in info.inputs] == list(parts[name].input_names)
        assert all(t.shape[0] == "batch" for t in info.inputs + info.outputs)
    assert manifest.parts["video_encoder"].inputs[0].shape == ("batch", 3, CFG.video.frames, CFG.video.crop_size, CFG.video.crop_size)
    assert manifest.parts["audio_encoder"].inputs[1].dtype == "bool"
    assert manifest.end_to_end_parity_max_abs_error < PARITY_TOLERANCE
    assert manifest.model_version == model_version(model, "tiny")
    assert manifest.preprocessing == preprocessing_constants(CFG)
    assert manifest.preprocessing["video"]["std"] == list(CFG.video.std)
    assert manifest.config_name == "tiny" and manifest.model_config() == CFG


def test_estimator_pt_round_trip(exported_tiny) -> None:
    model_dir, model = exported_tiny
    loaded, cfg = load_estimator_checkpoint(model_dir / "estimator.pt")
    assert cfg == CFG
    assert model_version(loaded, "tiny") == read_manifest(model_dir).model_version


def test_parity_failure_is_loud_and_leaves_no_manifest(tmp_path: Path) -> None:
    model = create_pain_estimator(CFG).eval()
    with pytest.raises(ExportError, match="part video_encoder: ONNX Runtime differs"):
        export_model_dir(model, CFG, tmp_path, tolerance=-1.0, progress=False)  # nothing passes a negative limit
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_export_from_training_checkpoint(tmp_path: Path, capsys) -> None:
    torch.manual_seed(5)
    model = create_pain_estimator(CFG)
    ckpt = tmp_path / "fusion.pt"
    torch.save({"model": model.state_dict(), "kind": "fusion", "model_config": CFG.to_dict(), "epoch": 3}, ckpt)
    assert run_export(parse(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--quiet"])) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest.model_version == model_version(model, "tiny")
    assert manifest.model_version in capsys.readouterr().out


def test_bad_checkpoints_are_clear_errors(tmp_path: Path, capsys) -> None:
    model = create_pain_estimator(CFG)
    baseline = tmp_path / "video.pt"
    torch.save({"model": model.state_dict(), "kind": "video", "model_config": CFG.to_dict()}, baseline)
    assert run_export(parse(["--checkpoint", str(baseline), "--out", str(tmp_path / "o")])) == 1
    assert "kind 'video'" in capsys.readouterr().err
    no_cfg = tmp_path / "nocfg.pt"
    torch.save({"model": model.state_dict()}, no_cfg)
    with pytest.raises(ExportError, match="'model_config'"):
        load_estimator_checkpoint(no_cfg)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="cannot be read"):
        load_estimator_checkpoint(garbage)
    wrong = tmp_path / "wrong.pt"
    full = json.loads(json.dumps(CFG.to_dict()))
    full["fusion"]["dim"] = 64
    torch.save({"model": model.state_dict(), "model_config": full}, wrong)
    with pytest.raises(ExportError, match="does not fit"):
        load_estimator_checkpoint(wrong)
    assert run_export(parse(["--random", "--out", str(tmp_path / "r")])) == 1
    assert "--config" in capsys.readouterr().err
