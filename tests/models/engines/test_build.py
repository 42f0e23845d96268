"""`neopain build-engines`: calibration windows, per-part calibration batches, and a clear exit without TensorRT."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from models.bench import synthetic_raw_window
from models.configs import tiny_config
from models.engines.base import EngineError
from models.engines.build import (
    EXIT_UNAVAILABLE,
    add_build_engines_arguments,
    part_calibration_batches,
    read_calibration_dir,
    run_build_engines,
    write_calibration_window,
)
from models.engines.tensorrt import tensorrt_available
from models.features.inputs import model_inputs
from models.manifest import read_manifest

CFG = tiny_config()
TRT_OK, TRT_REASON = tensorrt_available()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_build_engines_arguments(parser)
    return parser.parse_args(argv)


def capture(directory: Path, count: int) -> list[dict[str, np.ndarray]]:
    windows = [model_inputs(synthetic_raw_window(CFG, camera=(96, 80), seed=s), CFG) for s in range(count)]
    for i, w in enumerate(windows):
        write_calibration_window(directory / f"window-{i:04d}.npz", w)
    return windows


def test_calibration_windows_round_trip(exported_tiny, tmp_path: Path) -> None:
    written = capture(tmp_path, 3)
    read = read_calibration_dir(tmp_path, read_manifest(exported_tiny[0]))
    assert len(read) == 3
    for a, b in zip(written, read):
        assert list(b) == list(a)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
            assert b[name].dtype == a[name].dtype
    assert len(read_calibration_dir(tmp_path, read_manifest(exported_tiny[0]), limit=2)) == 2


def test_bad_calibration_windows_name_the_file_and_key(exported_tiny, tmp_path: Path) -> None:
    manifest = read_manifest(exported_tiny[0])
    with pytest.raises(EngineError, match="holds no .npz windows"):
        read_calibration_dir(tmp_path, manifest)
    window = capture(tmp_path, 1)[0]
    np.savez(tmp_path / "b.npz", **{**window, "hrv": np.zeros(5, np.float32)})
    with pytest.raises(EngineError, match=r"b.npz: key 'hrv' has shape \(5,\)"):
        read_calibration_dir(tmp_path, manifest)
    (tmp_path / "b.npz").unlink()
    np.savez(tmp_path / "c.npz", **{k: v for k, v in window.items() if k != "clip"})
    with pytest.raises(EngineError, match="c.npz: key 'clip' is missing"):
        read_calibration_dir(tmp_path, manifest)
    (tmp_path / "c.npz").write_bytes(b"PK garbage")
    with pytest.raises(EngineError, match="c.npz cannot be read"):
        read_calibration_dir(tmp_path, manifest)
    with pytest.raises(ValueError, match="misses inputs"):
        write_calibration_window(tmp_path / "d.npz", {"clip": window["clip"]})


def test_part_calibration_batches_feed_every_part(exported_tiny, tmp_path: Path) -> None:
    model_dir, _ = exported_tiny
    windows = capture(tmp_path, 3)
    batches = part_calibration_batches(model_dir, windows, batch_size=2)
    manifest = read_manifest(model_dir)
    assert list(batches) == list(manifest.parts)
    for name, part in manifest.parts.items():
        assert [b[part.inputs[0].name].shape[0] for b in batches[name]] == [2, 1]
        for spec in part.inputs:
            assert batches[name][0][spec.name].shape[1:] == tuple(spec.shape[1:])
    np.testing.assert_array_equal(batches["video_encoder"][0]["clip"][1], windows[1]["clip"])
    assert batches["fusion"][0]["audio_token_mask"].dtype == np.bool_


@pytest.mark.skipif(TRT_OK, reason=f"TensorRT is usable here ({TRT_REASON})")
def test_exits_non_zero_with_a_reason_without_tensorrt(exported_tiny, tmp_path: Path, capsys) -> None:
    code = run_build_engines(parse(["--model-dir", str(exported_tiny[0]), "--cache-dir", str(tmp_path)]))
    assert code == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "TensorRT engines cannot be built here" in err and TRT_REASON in err


# ------------------------------------------------------------------------------------------ GPU only

gpu = pytest.mark.gpu
needs_tensorrt = pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")


@gpu
@needs_tensorrt
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_engines_match_onnxruntime(exported_tiny, tmp_path: Path, precision: str) -> None:
    from models.engines.build import build_engines
    from models.engines.runtime import ScoringEngines, stack_windows

    model_dir, _ = exported_tiny
    windows = capture(tmp_path / "calib", 4)
    rows = build_engines(model_dir, tmp_path / "cache", precision, calibration=windows)
    assert all(built for _, _, built in rows)
    assert not any(built for _, _, built in build_engines(model_dir, tmp_path / "cache", precision, calibration=windows))
    batch = stack_windows(windows)
    with ScoringEngines(model_dir, "tensorrt", cache_dir=tmp_path / "cache", precision=precision) as trt_engines, \
            ScoringEngines(model_dir, "onnxruntime") as ort_engines:
        got, want = trt_engines.run(batch), ort_engines.run(batch)
    np.testing.assert_allclose(got.nips, want.nips, atol=0.05 if precision == "fp16" else 0.5)


@gpu
@needs_tensorrt
def test_tensorrt_foreign_engine_is_refused(exported_tiny, tmp_path: Path) -> None:
    from models.engines.cache import EngineCache, EngineCacheError
    from models.engines.tensorrt import TensorRTEngine, engine_key

    model_dir, _ = exported_tiny
    onnx = model_dir / "vitals_encoder.onnx"
    key = engine_key("vitals_encoder", onnx, "fp16")
    cache = EngineCache(tmp_path)
    foreign = dataclasses.replace(key, trt_version="0.0.0")
    cache.path_for(key).parent.mkdir(parents=True, exist_ok=True)
    from models.engines.cache import write_engine

    write_engine(cache.path_for(key), foreign, b"plan")
    with pytest.raises(EngineCacheError, match="trt_version"):
        TensorRTEngine.from_cache("vitals_encoder", onnx, "fp16", cache)


class _TimingConfig:
    """Stands in for TensorRT's IBuilderConfig (TensorRT cannot run here): a cache blob ``b"corrupt"`` cannot be
    read, one ``b"foreign"`` is refused by set_timing_cache (another GPU or TensorRT version), as 10.x does."""

    def __init__(self) -> None:
        self.used: bytes | None = None

    def create_timing_cache(self, blob: bytes) -> bytes:
        if blob == b"corrupt":
            raise RuntimeError("cannot deserialize the timing cache")
        return blob

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        if cache == b"foreign":
            return False
        self.used = cache
        return True


@pytest.mark.parametrize("stored, used, warned", [(None, b"", False), (b"mine", b"mine", False),
                                                   (b"foreign", b"", True), (b"corrupt", b"", True)])
def test_a_foreign_or_unreadable_timing_cache_is_replaced_by_an_empty_one(tmp_path, caplog, stored, used, warned):
    from models.engines.tensorrt import _use_timing_cache

    path = tmp_path / "timing.cache"
    if stored is not None:
        path.write_bytes(stored)
    config = _TimingConfig()
    with caplog.at_level("WARNING", logger="models.engines.tensorrt"):
        _use_timing_cache(config, path)
    assert config.used == used  # the build goes on, with the cache it can use
    assert ("starting an empty one" in caplog.text) == warned
