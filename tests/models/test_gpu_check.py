"""The GPU check's CPU-side parts: arguments, its refusal without a GPU (nothing installed, nothing written),
the calibration windows its export step writes. The export step itself runs in tests/models/engines/test_int8.py
(the `int8_model` fixture is exactly that step on the tiny model). The check proper needs a GPU: never in CI."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from models.configs import tiny_config
from models.estimator import INPUT_NAMES
from models.gpu_check import EXIT_NO_GPU, nvidia_gpus, parse_args, run, write_calibration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
BASH = shutil.which("bash") or "/bin/bash"


def fake_nvidia_smi(directory: Path, listing: str) -> Path:
    """A `nvidia-smi` that prints ``listing`` for ``-L`` (empty: a driver without a GPU)."""
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '%s' '{listing}'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return directory


def script(args: list[str], path: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": path, "HOME": str(tmp_path), "LANG": "C"}
    return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_arguments() -> None:
    args = parse_args(["--out", "r", "--batches", "8,1,8", "--config", "tiny"])
    assert args.batch_sizes == [1, 8] and args.config == "tiny" and args.runs == 20 and args.budget_s == 480
    for bad in (["--out", "r", "--batches", "x"], ["--out", "r", "--batches", "0"], ["--out", "r", "--runs", "0"], []):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_refuses_without_a_gpu_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(fake_nvidia_smi(tmp_path / "bin", "")))
    gpus, why = nvidia_gpus()
    assert gpus == [] and "lists no GPU" in why
    assert run(parse_args(["--out", str(tmp_path / "report")])) == EXIT_NO_GPU
    assert "no NVIDIA GPU here" in capsys.readouterr().err and not (tmp_path / "report").exists()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "nvidia-smi is not on PATH" in nvidia_gpus()[1]


def test_script_arguments_and_refusal(tmp_path: Path) -> None:
    system = os.environ.get("PATH", "/usr/bin:/bin")
    assert SCRIPT.stat().st_mode & stat.S_IXUSR
    done = script(["--help"], system, tmp_path)
    assert done.returncode == 0 and "--out DIR" in done.stdout
    for argv, message in ((["--bogus"], "unknown argument: --bogus"), ([], "--out is required"),
                          (["--out"], "--out needs a directory"), (["--out", "r", "--wheels", str(tmp_path / "no")], "not a directory")):
        done = script(argv, system, tmp_path)
        assert done.returncode == 2 and message in done.stderr, (argv, done.stderr)
    no_gpu = f"{fake_nvidia_smi(tmp_path / 'bin', '')}:{system}"
    done = script(["--out", str(tmp_path / "r")], no_gpu, tmp_path)
    assert done.returncode == 3 and "no NVIDIA GPU here" in done.stderr and not (tmp_path / ".cache").exists()
    without_driver = script(["--out", str(tmp_path / "r")], str(tmp_path / "empty"), tmp_path)
    assert without_driver.returncode == 3 and "nvidia-smi is not on PATH" in without_driver.stderr
    # a GPU, but --no-install and no virtualenv: a clear error, nothing installed
    gpu = f"{fake_nvidia_smi(tmp_path / 'gpu', 'GPU 0: NVIDIA H200 (UUID: GPU-0)')}:{system}"
    done = script(["--out", str(tmp_path / "r"), "--no-install", "--venv", str(tmp_path / "venv")], gpu, tmp_path)
    assert done.returncode == 4 and "no virtualenv" in done.stderr and not (tmp_path / "venv").exists()


def test_calibration_windows_of_the_export_step(tmp_path: Path) -> None:
    """The export step calibrates on windows in the capture-int8 format, with the model's input shapes."""
    cfg = tiny_config()
    files = sorted(write_calibration("tiny", tmp_path, 3).glob("*.npz"))
    assert [f.name for f in files] == ["window-0000.npz", "window-0001.npz", "window-0002.npz"]
    with np.load(files[0]) as window:
        assert set(window.files) == set(INPUT_NAMES)
        assert window["clip"].shape == (3, cfg.video.frames, cfg.video.crop_size, cfg.video.crop_size)
        assert window["presence"].tolist() == [1.0, 1.0, 1.0]


def test_a_step_may_only_take_what_is_left_of_the_budget(tmp_path: Path) -> None:
    """The 8-minute budget is enforced, not only reported: a step that would overrun it is stopped and named,
    and once it is spent no further step starts (the report is still written by the caller)."""
    import sys
    import time

    from models.gpu_check import CheckFailed, Steps

    steps = Steps(tmp_path, budget_s=600.0)
    steps.command("quick", [sys.executable, "-c", "print('ok')"])
    steps.budget_s = steps.elapsed_s + 1.0  # one second left, however long the first step took
    t0 = time.monotonic()
    with pytest.raises(CheckFailed, match=r"slow: stopped after \d+ s \(the budget ran out\)"):
        steps.command("slow", [sys.executable, "-c", "import time; time.sleep(30)"])
    assert time.monotonic() - t0 < 10
    with pytest.raises(CheckFailed, match=r"next: not started, the \d+ s budget is spent"):
        steps.command("next", [sys.executable, "-c", "print('never')"])
    assert [(row["step"], row["exit"]) for row in steps.rows] == [("quick", 0), ("slow", None), ("next", None)]
    assert "the budget ran out" in steps.rows[1]["tail"] and (tmp_path / "slow.log").is_file()


def test_the_text_report_shows_parity_and_its_failures() -> None:
    from models.gpu_check import summary_lines

    row = {"vs_onnxruntime_fp32_max": 0.012, "vs_onnxruntime_fp32_mean": 0.004, "vs_onnxruntime_int8_max": 0.03,
           "vs_onnxruntime_int8_mean": 0.01, "second_thread_max": None, "windows": 1}
    report = {"verdict": "FAILED", "gpus": ["GPU 0: NVIDIA H200"], "host": "h", "elapsed_s": 100.0, "budget_s": 480.0,
              "steps": [], "error": "parity: tensorrt_fp16_batch1: run from a second thread failed (see the log)",
              "parity": {"tensorrt_fp16_batch1": row, "failures": ["x"]}}
    text = "\n".join(summary_lines(report))
    assert "parity tensorrt_fp16_batch1: nips vs ONNX Runtime FP32 max 0.0120" in text
    assert "second thread failed" in text and "failed: parity: tensorrt_fp16_batch1" in text
