"""Backend selection: first that loads wins, every skipped backend is reported with its reason."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from models.engines.base import EngineError
from models.engines.select import open_scoring_engines
from models.engines.tensorrt import tensorrt_available

TRT_OK, TRT_REASON = tensorrt_available()
needs_no_tensorrt = pytest.mark.skipif(TRT_OK, reason=f"TensorRT is usable here ({TRT_REASON}); these tests need it absent")


@needs_no_tensorrt
def test_default_order_falls_back_from_tensorrt_with_the_reason(exported_tiny, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="models.engines.select"):
        engines = open_scoring_engines(exported_tiny[0], cache_dir=tmp_path)
    with engines:
        assert engines.backend == "onnxruntime"
        assert list(engines.skipped) == ["tensorrt"]
        assert TRT_REASON in engines.skipped["tensorrt"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("tensorrt unavailable" in m and TRT_REASON in m for m in warnings)


@needs_no_tensorrt
def test_falls_through_to_the_next_in_the_given_order(exported_tiny) -> None:
    with open_scoring_engines(exported_tiny[0], order=("tensorrt", "torch", "onnxruntime")) as engines:
        assert engines.backend == "torch"
        assert set(engines.skipped) == {"tensorrt"}


def test_a_corrupted_onnx_file_falls_back_to_pytorch(model_copy: Path, caplog) -> None:
    path = model_copy / "audio_encoder.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with caplog.at_level(logging.ERROR, logger="models.engines.select"):
        engines = open_scoring_engines(model_copy, order=("onnxruntime", "torch"))
    with engines:
        assert engines.backend == "torch"
        assert "corrupted" in engines.skipped["onnxruntime"]
    assert any("onnxruntime failed to load" in r.getMessage() for r in caplog.records)


@needs_no_tensorrt
def test_no_backend_is_a_clear_error(exported_tiny, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no engine backend could load .*tensorrt: unavailable: .*TensorRT"):
        open_scoring_engines(exported_tiny[0], order=("tensorrt",), cache_dir=tmp_path)


def test_missing_model_dir_names_every_backend(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        open_scoring_engines(tmp_path / "none", order=("onnxruntime", "torch"))
    message = str(info.value)
    assert "onnxruntime: failed to load" in message and "torch: failed to load" in message
    assert "neopain export" in message


def test_bad_order(exported_tiny) -> None:
    with pytest.raises(ValueError, match="unknown backends"):
        open_scoring_engines(exported_tiny[0], order=("onnxruntime", "cuda"))
    with pytest.raises(ValueError, match="empty"):
        open_scoring_engines(exported_tiny[0], order=())
