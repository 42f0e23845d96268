"""``neopain calibrate capture-int8``: windows cut, gated and converted by the daemon's own pieces, written in the
engine builder's format and read back by the builder's own reader; windows failing the quality gate are not
kept. The gate tests fill real ring buffers by hand; the end-to-end test captures from the simulated bed."""
from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from appliance.scoring.buffers import ModalityBuffers, VitalsSample
from appliance.clock import NS_PER_S
from appliance.sources.face import FaceObservation
from appliance.sources.microphone import AudioPeriod
from appliance.scoring.windows import WindowBuilder, WindowConfig
from calibration.capture_int8 import (EXIT_CONFIG, WindowCapture, add_capture_int8_arguments, default_out_dir,
                                      run_capture_int8)
from calibration.commission.files import private_dir
from models.configs import MODALITIES, tiny_config
from models.estimator import INPUT_NAMES
from tests.appliance.daemon_harness import ROOT

T = 1_000 * NS_PER_S  # the window end, on an arbitrary monotonic clock
PERIOD = 1024


def fill(buffers: ModalityBuffers, *, face: bool = True, audio_amplitude: int = 3000, seed: int = 0) -> None:
    """4 s of face crops at 10 fps, 4 s of 16 kHz audio in ALSA-sized periods, 30 s of 1 Hz HR/SpO2, all
    ending just before ``T`` (fresh)."""
    rng = np.random.default_rng(seed)
    for i in range(40):
        t = T - (39 - i) * NS_PER_S // 10
        crop = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) if face else None
        buffers.frames.append(FaceObservation(t, crop, (0, 0, 64, 64) if face else None,
                                              "fixed roi" if face else "no face detected", frame_index=i))
    n = 4 * 16000 // PERIOD
    for k in range(n):
        t = T - (n - 1 - k) * PERIOD * NS_PER_S // 16000
        samples = (rng.normal(0, audio_amplitude, PERIOD) if audio_amplitude else np.zeros(PERIOD)).astype(np.int16)
        buffers.audio.append(AudioPeriod(t, samples, 16000, k))
    for s in range(30):
        buffers.vitals.append(VitalsSample(T - (29 - s) * NS_PER_S, 150.0 + s % 5, 95.0))


def capture(tmp_path: Path, **kw) -> WindowCapture:
    buffers = ModalityBuffers()
    fill(buffers, **kw)
    return WindowCapture(WindowBuilder(buffers, WindowConfig()), tiny_config(), private_dir(tmp_path / "cal"),
                         ("video", "audio", "vitals"))


def test_a_good_window_is_written_as_the_builder_expects(tmp_path: Path) -> None:
    cap = capture(tmp_path)
    decision = cap.step(T)
    assert decision.kept, decision.reason
    assert decision.path == tmp_path / "cal" / "window-000000.npz"
    assert stat.S_IMODE(decision.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cal").stat().st_mode) == 0o700
    cfg = tiny_config()
    with np.load(decision.path, allow_pickle=False) as data:
        assert set(data.files) == set(INPUT_NAMES)
        assert data["clip"].shape == (3, cfg.video.frames, cfg.video.crop_size, cfg.video.crop_size)
        assert data["clip"].dtype == np.float32
        assert data["audio_pad_mask"].dtype == np.bool_ and data["audio_pad_mask"].shape == (cfg.audio.max_patches,)
        assert data["audio_patches"].shape == (cfg.audio.max_patches, 96, 64)
        assert not data["audio_pad_mask"].all()  # real audio patches, not padding
        assert data["presence"].tolist() == [1.0] * len(MODALITIES)
        assert np.isfinite(data["vitals_series"]).all() and data["vitals_series"][3].any()  # SpO2 validity
        assert data["clip"].std() > 0.1  # the crops, normalised, not the zero filler


@pytest.mark.parametrize("kw, modality, words", [
    ({"audio_amplitude": 0}, "audio", "digital silence"),
    ({"face": False}, "video", "no face"),
])
def test_a_window_failing_the_quality_gate_is_not_kept(tmp_path: Path, kw: dict, modality: str, words: str) -> None:
    cap = capture(tmp_path, **kw)
    decision = cap.step(T)
    assert not decision.kept and decision.path is None
    assert decision.reason.startswith(f"{modality}:") and words in decision.reason
    assert list((tmp_path / "cal").iterdir()) == []
    # the same buffers are fine for a capture that does not need that modality (e.g. camera disabled)
    cap.required = tuple(m for m in cap.required if m != modality)
    assert cap.step(T).kept


def test_stale_data_is_not_kept(tmp_path: Path) -> None:
    cap = capture(tmp_path)
    decision = cap.step(T + 10 * NS_PER_S)  # ten seconds after the newest sample of every modality
    assert not decision.kept and "stale" in decision.reason


def test_numbering_continues_and_never_overwrites(tmp_path: Path) -> None:
    out = private_dir(tmp_path / "cal")
    (out / "window-000007.npz").write_bytes(b"earlier capture")
    os.chmod(out, 0o755)
    private_dir(out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700  # an existing folder is tightened
    cap = capture(tmp_path)
    assert cap.step(T).path.name == "window-000008.npz"
    assert (out / "window-000007.npz").read_bytes() == b"earlier capture"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_capture_int8_arguments(parser)
    return parser.parse_args(list(argv))


def test_bad_config_or_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[scoring]\nmodel_config = 'huge'\n")
    assert run_capture_int8(_args("--config", str(bad), "--out", str(tmp_path / "o"))) == EXIT_CONFIG
    assert "scoring.model_config" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text(f"[scoring]\nmodel_config = 'tiny'\nmodel_dir = '{tmp_path / 'none'}'\n")
    assert run_capture_int8(_args("--config", str(good), "--windows", "0", "--out", str(tmp_path / "o"))) == EXIT_CONFIG
    assert "--windows" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_capture_from_the_simulated_bed_reads_back_with_the_builders_reader(tmp_path: Path, tiny_model_dir: Path) -> None:
    from appliance.devtools.simulate import SimulatedBed, synth_bed_cohort
    from models.engines.build import read_calibration_dir
    from models.manifest import read_manifest

    model_dir = tiny_model_dir
    cohort = synth_bed_cohort(tmp_path / "cohort", minutes=0.5, seed=3, video_size=64)
    with SimulatedBed(cohort, workdir=tmp_path / "bed") as bed:
        config = bed.write_appliance_config(tmp_path / "appliance.toml",
                                            scoring={"model_dir": str(model_dir)})
        env = dict(os.environ, **bed.environment())
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.run([sys.executable, "-m", "appliance.cli", "calibrate", "capture-int8", "--config",
                               str(config), "--windows", "3", "--every", "1", "--warmup", "4", "--timeout", "60",
                               "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "patient data" in proc.stderr
    from appliance.config import load_config

    out = default_out_dir(load_config(config))
    assert out == tmp_path / "bed" / "int8-calibration"  # the state dir from the config, not anywhere else
    files = sorted(out.iterdir())
    assert [p.name for p in files] == [f"window-{i:06d}.npz" for i in range(3)]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    manifest = read_manifest(model_dir)
    windows = read_calibration_dir(out, manifest)
    assert len(windows) == 3
    specs = {t.name: t for p in manifest.parts.values() for t in p.inputs}
    for w in windows:
        for name in INPUT_NAMES:
            assert w[name].shape == tuple(specs[name].shape[1:]) and w[name].dtype == np.dtype(specs[name].dtype)
        assert w["presence"].tolist() == [1.0, 1.0, 1.0]  # every enabled modality passed the gate
    # spread over time: the windows differ (the bed plays a moving recording)
    assert not np.array_equal(windows[0]["clip"], windows[2]["clip"])
