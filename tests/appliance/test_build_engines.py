"""`neopain build-engines --config`: the appliance config supplies the folders, the model size and the backends."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.build_engines import add_build_engines_arguments, run_build_engines
from models.engines.build import EXIT_UNAVAILABLE
from models.engines.tensorrt import tensorrt_available

TRT_OK, TRT_REASON = tensorrt_available()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_build_engines_arguments(parser)
    return parser.parse_args(argv)


def write_config(path: Path, model_dir: Path, cache: Path, backends: str, model_config: str | None = None) -> Path:
    """``model_config`` None leaves the key out: the size then comes from the model's manifest."""
    path.write_text(
        f'[scoring]\nmodel_dir = "{model_dir}"\nengine_cache_dir = "{cache}"\n'
        f'backends = [{backends}]\n' + (f'model_config = "{model_config}"\n' if model_config else "")
    )
    return path


def test_config_file_supplies_the_directories(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    model_dir = tiny_model_dir
    cpu_only = write_config(tmp_path / "cpu.toml", model_dir, tmp_path / "cache", '"onnxruntime", "torch"')
    assert run_build_engines(parse(["--config", str(cpu_only)])) == 0
    assert "nothing to build" in capsys.readouterr().out
    pinned = write_config(tmp_path / "tiny.toml", model_dir, tmp_path / "cache", '"onnxruntime"', "tiny")
    assert run_build_engines(parse(["--config", str(pinned)])) == 0  # a pinned size the manifest agrees with
    capsys.readouterr()
    mismatch = write_config(tmp_path / "full.toml", model_dir, tmp_path / "cache", '"onnxruntime"', "full")
    assert run_build_engines(parse(["--config", str(mismatch)])) == 1
    assert "scoring.model_config is 'full'" in capsys.readouterr().err
    if not TRT_OK:
        with_trt = write_config(tmp_path / "trt.toml", model_dir, tmp_path / "cache", '"tensorrt", "onnxruntime"')
        assert run_build_engines(parse(["--config", str(with_trt)])) == EXIT_UNAVAILABLE
    assert run_build_engines(parse([])) == 1
    assert "--model-dir" in capsys.readouterr().err
