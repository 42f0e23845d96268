"""`neopain build-engines --config`: the appliance config supplies the folders, the model size and the backends."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from appliance.build_engines import add_build_engines_arguments, run_build_engines
from models.configs import tiny_config
from models.engines.build import EXIT_UNAVAILABLE
from models.engines.tensorrt import tensorrt_available
from models.estimator import create_pain_estimator
from models.export import export_model_dir

TRT_OK, TRT_REASON = tensorrt_available()


@pytest.fixture(scope="module")
def exported_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(1)
    cfg = tiny_config()
    model = create_pain_estimator(cfg).eval()
    out = tmp_path_factory.mktemp("model") / "tiny"
    export_model_dir(model, cfg, out, progress=False)
    return out, model


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_build_engines_arguments(parser)
    return parser.parse_args(argv)


def write_config(path: Path, model_dir: Path, cache: Path, backends: str, model_config: str = "tiny") -> Path:
    path.write_text(
        f'[scoring]\nmodel_dir = "{model_dir}"\nengine_cache_dir = "{cache}"\n'
        f'backends = [{backends}]\nmodel_config = "{model_config}"\n'
    )
    return path


def test_config_file_supplies_the_directories(exported_tiny, tmp_path: Path, capsys) -> None:
    model_dir = exported_tiny[0]
    cpu_only = write_config(tmp_path / "cpu.toml", model_dir, tmp_path / "cache", '"onnxruntime", "torch"')
    assert run_build_engines(parse(["--config", str(cpu_only)])) == 0
    assert "nothing to build" in capsys.readouterr().out
    mismatch = write_config(tmp_path / "full.toml", model_dir, tmp_path / "cache", '"onnxruntime"', "full")
    assert run_build_engines(parse(["--config", str(mismatch)])) == 1
    assert "scoring.model_config is 'full'" in capsys.readouterr().err
    if not TRT_OK:
        with_trt = write_config(tmp_path / "trt.toml", model_dir, tmp_path / "cache", '"tensorrt", "onnxruntime"')
        assert run_build_engines(parse(["--config", str(with_trt)])) == EXIT_UNAVAILABLE
    assert run_build_engines(parse([])) == 1
    assert "--model-dir" in capsys.readouterr().err
