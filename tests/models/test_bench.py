"""`neopain bench` on the tiny model: runs, reports every stage and writes valid JSON (no timing asserts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.bench import add_bench_arguments, format_report, run_bench, stats_ms, synthetic_raw_window
from models.configs import tiny_config
from models.engines.tensorrt import tensorrt_available
from models.features.inputs import model_inputs

PARTS = {"video_encoder", "audio_encoder", "vitals_encoder", "fusion"}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(argv)


def test_bench_tiny_random_writes_the_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["--random", "--config", "tiny", "--backends", "torch,onnxruntime,tensorrt", "--runs", "3", "--warmup", "1",
            "--threads", "1", "--camera", "320x240", "--json", str(out), "--plot", str(tmp_path / "bench.png")]
    assert run_bench(parse(argv)) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"model", "settings", "host", "preprocessing", "backends", "unavailable", "ratios"}
    assert report["model"]["config"] == "tiny" and report["model"]["random"] is True
    samples = report["host"]["load_average_samples"]  # sampled while it ran (Linux has a load average)
    assert samples["n"] >= 1 and samples["min"] <= samples["median"] <= samples["max"]
    assert set(report["preprocessing"]) == {"video", "video_device_crops", "video_camera_resize", "audio", "vitals",
                                            "total"}
    assert report["settings"]["clip_frames"] == tiny_config().video.frames
    assert set(report["backends"]) == {"torch", "onnxruntime"}
    for name, r in report["backends"].items():
        assert set(r["parts"]) == PARTS
        assert r["engine_cpu"]["p50"] > 0  # the process's CPU time over the engines' runs, every thread
        for stage in [*r["parts"].values(), r["engine"], r["engine_cpu"], r["preprocessing"], r["end_to_end"]]:
            assert stage["n"] == 3 and stage["p50"] <= stage["p95"] <= stage["p99"] <= stage["max"]
        assert 0 < r["preprocessing_share"] < 1
        assert r["throughput_windows_per_s"] > 0
        assert r["memory"]["rss_before_mb"] > 0
    if not tensorrt_available()[0]:
        assert "TensorRT" in report["unavailable"]["tensorrt"]
    ratio = report["ratios"]["onnxruntime_vs_torch"]
    assert ratio["engine_p50_speedup"] == pytest.approx(
        report["backends"]["torch"]["engine"]["p50"] / report["backends"]["onnxruntime"]["engine"]["p50"]
    )
    printed = capsys.readouterr().out
    assert "end-to-end" in printed and "onnxruntime_vs_torch" in printed
    assert format_report(report) in printed
    png = cv2.imread(str(tmp_path / "bench.png"))  # a real image: the latency split of both backends
    assert png is not None and png.shape[0] > 300 and png.shape[1] > 500 and png.std() > 10


def test_bench_rejects_bad_arguments(tmp_path: Path, capsys) -> None:
    assert run_bench(parse(["--model-dir", str(tmp_path), "--backends", "torch,cuda"])) == 1
    assert "--backends" in capsys.readouterr().err
    assert run_bench(parse(["--model-dir", str(tmp_path), "--camera", "wide"])) == 1
    assert run_bench(parse(["--model-dir", str(tmp_path / "none")])) == 1
    assert "does not exist" in capsys.readouterr().err
    assert run_bench(parse(["--model-dir", str(tmp_path), "--face", "0"])) == 1
    assert "--face must be a positive number of pixels, got 0" in capsys.readouterr().err


def test_stats_and_synthetic_window() -> None:
    s = stats_ms([float(v) for v in range(1, 101)])
    assert s["p50"] == pytest.approx(50.5) and s["p99"] == pytest.approx(99.01) and s["n"] == 100
    with pytest.raises(ValueError):
        stats_ms([])
    cfg = tiny_config()
    window = synthetic_raw_window(cfg, camera=(200, 100))
    assert window.frames.shape == (cfg.video.frames, 100, 200, 3)
    assert window.face_box == (50, 0, 100, 100)  # the worst case: a face filling the frame height
    assert synthetic_raw_window(cfg, camera=(200, 100), face=60).face_box == (70, 20, 60, 60)
    inputs = model_inputs(window, cfg)
    assert inputs["presence"].tolist() == [1.0, 1.0, 1.0]  # a usable window in every modality
    assert not inputs["audio_pad_mask"].all()
    assert np.all(inputs["vitals_series"][1] == 1.0)  # HR valid over the whole 30 s
