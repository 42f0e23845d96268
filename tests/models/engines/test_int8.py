"""INT8 from one quantized graph (tiny model): `neopain export --int8`, ONNX Runtime on the QDQ parts, the
accuracy check and its refusals, the x86 rewrite, and TensorRT explicit quantization (GPU only)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from models.bench import benchmark, drift_windows
from models.configs import tiny_config
from models.engines.runtime import ScoringEngines, stack_windows
from models.engines.tensorrt import tensorrt_available
from models.export import add_export_arguments, run_export
from models.gpu_check import write_calibration
from models.manifest import MANIFEST_NAME, ManifestError, read_manifest
from models.quantize import QDQ_SUFFIX, QuantizationRefused, calibration_set, quantize_model_dir, windows_sha256

CFG = tiny_config()
# The stated bound: on the tiny model, INT8 `nips` stays within 0.05 NIPS of FP32 on any window
# (measured: max 0.005 on the held-out and drift windows).
NIPS_BOUND = 0.05


def export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    return run_export(parser.parse_args(argv))


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`neopain export --random --config tiny --int8 DIR` on 8 synthetic windows (the gpu-check's export step)."""
    root = tmp_path_factory.mktemp("int8")
    calib = write_calibration("tiny", root / "calib", 8)
    assert export(["--random", "--config", "tiny", "--out", str(root / "model"), "--quiet", "--int8", str(calib)]) == 0
    return root / "model"


def test_export_int8_writes_qdq_parts_beside_fp32(int8_model: Path) -> None:
    manifest = read_manifest(int8_model)
    int8 = manifest.int8
    assert int8 is not None
    for name, part in manifest.parts.items():
        qdq = int8.parts[name]
        assert qdq.onnx == Path(part.onnx).stem + QDQ_SUFFIX and (int8_model / part.onnx).is_file()
        assert qdq.quantized_ops > 0 and qdq.reason == ""
        graph = onnx.load(str(int8_model / qdq.onnx)).graph
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
        # TensorRT's rules: signed INT8, symmetric (zero point 0)
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
        float_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in inits]
        assert all(inits[n.input[1]].shape[1] <= 4 for n in float_convs)  # only the input stems stay float
        assert name != "video_encoder" or len(float_convs) == 1
    windows = [np.load(p) for p in sorted((int8_model.parent / "calib").glob("*.npz"))]
    assert int8.calibration["sha256"] == windows_sha256([{k: w[k] for k in w.files} for w in windows])
    assert int8.calibration["windows"] == 8 and int8.calibration["held_out_windows"] == 2
    acc = int8.accuracy
    assert acc["passed"] is True and acc["mae_change"] is None and "not measurable" in acc["note"]
    assert acc["nips_max_abs_diff"] <= NIPS_BOUND


def test_onnxruntime_runs_the_qdq_parts_within_the_bound(int8_model: Path) -> None:
    batch = stack_windows(drift_windows(CFG, 6))
    with ScoringEngines(int8_model, "onnxruntime", precision="int8") as int8, \
            ScoringEngines(int8_model, "onnxruntime", precision="fp32") as fp32:
        assert int8.precision == "int8" and int8.quantized_parts == list(int8.manifest.parts)
        assert fp32.precision == "fp32" and fp32.quantized_parts == []
        rewrites = [e.rewrites for e in int8.engines.values()]  # the x86 (U8S8) view of the QDQ graph
        assert all(r["activations_to_uint8"] > 0 for r in rewrites) and sum(r["relu_folded"] for r in rewrites) > 0
        got, want = int8.run(batch), fp32.run(batch)
    assert np.abs(got.nips - want.nips).max() <= NIPS_BOUND
    assert not np.array_equal(got.nips, want.nips)  # it did run something else


def test_x86_rewrite_agrees_with_the_qdq_graph_as_written(int8_model: Path) -> None:
    """The in-memory rewrite for ONNX Runtime's VNNI kernels vs the QDQ file run literally (what TensorRT gets).

    The rewrite only moves a few rounding decisions (int32 bias, one requantization instead of two around a
    ReLU): its differences from the literal graph are rare and small next to INT8's own error vs FP32.
    """
    import onnxruntime as ort

    from models.engines.ort_int8 import cpu_int8_model_bytes

    manifest = read_manifest(int8_model)
    batch = stack_windows(drift_windows(CFG, 3))
    for name, part in manifest.parts.items():
        path = int8_model / manifest.int8.parts[name].onnx
        data, counts = cpu_int8_model_bytes(path)
        if name in ("video_encoder", "vitals_encoder"):  # the CNNs: every quantized ReLU folds into its conv
            graph = onnx.load_from_string(data).graph
            producer = {o: n.op_type for n in graph.node for o in n.output}
            assert counts["relu_folded"] > 0, name
            assert all(producer.get(n.input[0]) == "Conv" for n in graph.node if n.op_type == "Relu"), name  # float stem
        # the layout rewrites: the I3D stem in 2-D, its pool after res2 and VGGish's pools on the uint8 codes
        assert counts["stem_as_2d"] == (name == "video_encoder"), name
        assert counts["temporal_pool_as_max"] == (name == "video_encoder"), name
        assert (counts["maxpool_uint8"] > 0) == (name == "audio_encoder"), name
        feed = {n: batch[n] if n in batch else None for n in part.input_names}
        if any(v is None for v in feed.values()):
            continue  # the fusion head's inputs are tokens; its rewrite is covered end to end above
        run = lambda source: ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feed)[0]  # noqa: E731
        literal, fast, fp32 = run(str(path)), run(data), run(str(int8_model / part.onnx))
        quant_error = np.abs(literal - fp32)
        assert np.abs(fast - literal).mean() <= 0.25 * quant_error.mean() + 1e-7, name
        assert np.abs(fast - fp32).max() <= 2 * quant_error.max() + 1e-6, name


def test_bench_measures_int8_against_fp32_in_one_run(int8_model: Path, tmp_path: Path) -> None:
    report = benchmark(int8_model, ["onnxruntime"], runs=2, warmup=0, threads=1, camera=(160, 120),
                       precision=["fp32", "int8"], drift=4)
    assert set(report["backends"]) == {"onnxruntime:fp32", "onnxruntime:int8"}
    assert report["backends"]["onnxruntime:int8"]["precision"] == "int8"
    ratio = report["precision_ratios"]["onnxruntime:int8_vs_fp32"]
    assert ratio["ran_as"] == "int8" and ratio["video_encoder_p50_speedup"] > 0
    assert ratio["drift_windows"] == 4 and ratio["nips_max_abs_diff"] <= NIPS_BOUND
    assert report["int8"]["accuracy"]["passed"] is True
    # which kernels ONNX Runtime runs: integer convolutions, the float stem as one blocked (NCHWc) 2-D conv
    int8_video = report["backends"]["onnxruntime:int8"]["kernels"]["video_encoder"]
    assert int8_video["com.microsoft:QLinearConv"] > 0 and int8_video["com.microsoft.nchwc:Conv"] == 1
    assert "Conv" not in int8_video and "com.microsoft:QLinearConv" not in report["backends"]["onnxruntime:fp32"]["kernels"]["video_encoder"]
    targets = {t["target"]: t for t in report["targets"]}
    assert targets["video encoder INT8 vs FP32 (p50)"]["value"] == pytest.approx(ratio["video_encoder_p50_speedup"])
    assert targets["MAE change vs ratings at export (NIPS)"]["met"] is None  # no ratings: not measurable, said so
    # the device path's CPU share counts one camera-thread resize per clip slot on top of the scoring thread
    steps, int8 = report["preprocessing"], report["backends"]["onnxruntime:int8"]
    scoring = steps["total"]["p50"] - steps["video"]["p50"] + steps["video_device_crops"]["p50"]
    cpu = scoring + report["settings"]["clip_frames"] * steps["video_camera_resize"]["p50"]
    assert targets["  device: CPU share, camera resizes counted (est.)"]["value"] == pytest.approx(
        cpu / (int8["engine_cpu"]["p50"] + cpu))
    assert targets["  device: scoring thread's share (estimate)"]["value"] == pytest.approx(
        scoring / (int8["engine"]["p50"] + scoring))
    json.dumps(report)
    from models.bench_plot import plot_report

    png = cv2.imread(str(plot_report(report, tmp_path / "bench.png")))  # with the shares panel beside the latency
    assert png is not None and png.shape[1] > 1000 and png.std() > 10


def test_wrong_shape_calibration_set_is_refused_naming_file_tensor_and_shapes(tmp_path: Path, capsys) -> None:
    calib = write_calibration("tiny", tmp_path / "calib", 4)
    bad = calib / "window-0002.npz"
    with np.load(bad) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["clip"] = np.zeros((3, 4, 16, 16), np.float32)
    np.savez(bad, **arrays)
    out = tmp_path / "model"
    assert export(["--random", "--config", "tiny", "--out", str(out), "--quiet", "--int8", str(calib)]) == 1
    err = capsys.readouterr().err
    want = (3, CFG.video.frames, CFG.video.crop_size, CFG.video.crop_size)
    assert "window-0002.npz" in err and "'clip'" in err and "(3, 4, 16, 16)" in err and str(want) in err
    assert "FP32 model" in err and "kept" in err
    assert read_manifest(out).int8 is None and not list(out.glob(f"*{QDQ_SUFFIX}"))


def test_accuracy_refusal_keeps_fp32_and_exits_non_zero(model_copy: Path, tmp_path: Path, capsys) -> None:
    manifest = read_manifest(model_copy)
    windows = drift_windows(CFG, 8)
    with ScoringEngines(model_copy, "onnxruntime", precision="fp32") as fp32:
        ratings = fp32.run(stack_windows(windows)).nips.astype(np.float64)  # FP32 is exact: any INT8 error worsens MAE
    before = (model_copy / MANIFEST_NAME).read_text()
    with pytest.raises(QuantizationRefused, match=r"MAE 0\.0000 -> .*limit 1e-06 NIPS"):
        quantize_model_dir(model_copy, calibration_set(windows, manifest, "rated", ratings), max_mae_increase=1e-6,
                           progress=False)
    assert (model_copy / MANIFEST_NAME).read_text() == before and not list(model_copy.glob(f"*{QDQ_SUFFIX}"))
    # The command: no ratings in captured windows, so the bound (mean |INT8 - FP32|) is what is held to the limit.
    calib = write_calibration("tiny", tmp_path / "calib", 4)
    out = tmp_path / "model"
    argv = ["--random", "--config", "tiny", "--out", str(out), "--quiet", "--int8", str(calib), "--int8-max-mae-increase", "0"]
    assert export(argv) == 1
    err = capsys.readouterr().err
    assert "INT8 refused, the FP32 model is kept" in err and "not measurable" in err
    assert read_manifest(out).int8 is None


def test_a_rated_dataset_measures_the_mae_change(model_copy: Path, tmp_path: Path) -> None:
    """Calibrating on a dataset (the synthetic cohort's layout) brings ratings: the MAE change is measured."""
    from models.data.synth import SynthOptions, synth_cohort
    from models.data.synth_video import VideoOptions
    from models.quantize import load_calibration_set

    synth_cohort(tmp_path / "cohort", 2, seed=0, progress=False, overwrite=True,
                 options=SynthOptions(minutes=1.0, intubated_probability=0.0, video=VideoOptions(size=64, fps=8.0)))
    calibration = load_calibration_set(tmp_path / "cohort", read_manifest(model_copy), limit=8)
    assert calibration.ratings is not None and len(calibration) == 8 and calibration.source.startswith("dataset ")
    acc = quantize_model_dir(model_copy, calibration, progress=False).int8.accuracy
    assert acc["passed"] and acc["mae_change"] == pytest.approx(acc["mae_int8"] - acc["mae_fp32"])
    assert abs(acc["mae_change"]) <= acc["nips_mean_abs_diff"] + 1e-12  # |MAE change| <= mean |INT8 - FP32|


def test_a_model_without_qdq_parts_runs_fp32_at_int8_and_says_so(exported_tiny, caplog) -> None:
    model_dir, _ = exported_tiny
    with caplog.at_level(logging.WARNING), ScoringEngines(model_dir, "onnxruntime", precision="int8") as engines:
        assert engines.precision == "fp32" and engines.quantized_parts == []
    assert "no INT8 (QDQ) parts" in caplog.text and "neopain export --int8" in caplog.text


def test_a_corrupted_qdq_part_is_refused(int8_model: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(int8_model, tmp_path / "model"))
    path = copy / read_manifest(copy).int8.parts["fusion"].onnx
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ManifestError, match="INT8 file .*fusion.int8.onnx.*corrupted"):
        ScoringEngines(copy, "onnxruntime", precision="int8")
    with ScoringEngines(copy, "onnxruntime", precision="fp32") as fp32:  # FP32 is unaffected
        assert fp32.precision == "fp32"
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["int8"]["accuracy"]["passed"] = False
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="did not pass their accuracy check"):
        read_manifest(copy)


# ------------------------------------------------------------------------------------------ GPU only

TRT_OK, TRT_REASON = tensorrt_available()


@pytest.mark.gpu
@pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
def test_tensorrt_builds_int8_from_the_qdq_graph_without_calibration(int8_model: Path, tmp_path: Path) -> None:
    from models.engines.build import build_engines

    rows = build_engines(int8_model, tmp_path / "cache", "int8", calibration=None)  # no windows: explicit only
    assert all(built for _, _, built in rows)
    batch = stack_windows(drift_windows(CFG, 4))
    with ScoringEngines(int8_model, "tensorrt", cache_dir=tmp_path / "cache", precision="int8") as trt, \
            ScoringEngines(int8_model, "onnxruntime", precision="int8") as cpu:
        np.testing.assert_allclose(trt.run(batch).nips, cpu.run(batch).nips, atol=NIPS_BOUND)
