"""End to end, the face path: simulated bed -> ``neopain run`` -> a real mosquitto -> a subscriber.

The bed plays the synthetic cohort's rendered infant (320 px frames, through OpenCV as a video file) with no
fixed ROI, so the daemon's own face detector (CenterFace) must find the face for the video modality to be
scored. Then the same bed with ``camera.face_roi`` reaching beyond the frame: refused when the first frame
arrives, with a journal line and health naming the key and the frame size, and no video scored. The camera is
the only enabled sensor in both runs, so every score is a video score and its absence is a refusal.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.appliance.daemon_harness import DaemonProcess
from tests.appliance.mqtt.broker import broker_factory, subscriber_factory

# The MQTT tests' real mosquitto and subscriber (pytest finds a module's fixtures by attribute name).
__all__ = ["broker_factory", "subscriber_factory"]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory):
    from appliance.devtools.simulate import SimulatedBed, synth_bed_cohort

    cohort = synth_bed_cohort(tmp_path_factory.mktemp("cohort"), minutes=0.25, seed=3)
    with SimulatedBed(cohort, workdir=tmp_path_factory.mktemp("bed")) as running:
        yield running


def _run(bed, tmp_path: Path, name: str, port: int, model_dir: Path, until, timeout: float, **camera) -> DaemonProcess:
    """``model_dir``: the shared deployable tiny model (tests/conftest.py ``tiny_model_dir``)."""
    config = bed.write_appliance_config(
        tmp_path / f"{name}.toml", device={"id": f"face-{name}", "site": "face", "bed": name},
        camera=camera, microphone={"enabled": False}, monitor={"enabled": False},
        mqtt={"host": "127.0.0.1", "port": port, "health_interval_s": 2.0},
        scoring={"model_dir": str(model_dir), "backends": ["onnxruntime"], "cadence_s": 1.0},
        outbox={"path": str(tmp_path / f"{name}.sqlite3")}, calibration={"bundle": ""})
    daemon = DaemonProcess(config, tmp_path / f"{name}.log", bed.environment()).start()
    deadline = time.monotonic() + timeout
    try:
        while not until(daemon) and time.monotonic() < deadline:
            assert daemon.proc.poll() is None, daemon.text()[-3000:]
            time.sleep(0.2)
    finally:
        daemon.terminate()
    return daemon


@pytest.mark.slow
def test_the_device_detector_finds_the_bed_s_face_and_a_roi_beyond_the_frame_is_refused(
        bed, tiny_model_dir: Path, broker_factory, subscriber_factory, tmp_path: Path) -> None:
    broker = broker_factory()
    sub = subscriber_factory(broker.port, ["neopain/face/#"])
    width, height = bed.recording.video_size
    assert (width, height) == (320, 320)  # rendered at the bed camera's resolution, not upscaled

    # 1. no ROI: the detector finds the rendered face and the video modality is scored
    found = _run(bed, tmp_path, "detect", broker.port, tiny_model_dir, lambda d: len(d.produced()) >= 3, 90)
    scores = [m.json() for m in sub.on_topic("/detect/score")]
    assert len(found.produced()) >= 3 and scores, found.text()[-3000:]
    assert all(s["modalities"]["video"]["used"] for s in scores), scores[-1]["modalities"]
    assert "face detector" not in found.text()  # CenterFace loaded: no fallback line

    # 2. a ROI one pixel beyond the frame: refused at the first frame, health names it, nothing scored
    roi = [1, 0, width, height]
    refused = _run(bed, tmp_path, "beyond", broker.port, tiny_model_dir,
                   lambda d: any("camera.face_roi" in (m.json().get("detail") or "")
                                 for m in sub.on_topic("/beyond/health")), 60, face_roi=roi)
    assert refused.produced() == [] and sub.on_topic("/beyond/score") == []
    health = [m.json() for m in sub.on_topic("/beyond/health")]
    named = [h for h in health if "camera.face_roi" in (h.get("detail") or "")]
    assert named, [h.get("detail") for h in health]
    assert named[-1]["state"] == "no_score"
    assert f"camera.face_roi {roi}" in named[-1]["detail"] and f"{width}x{height} frame" in named[-1]["detail"]
    log = refused.text()
    assert log.count(f"camera.face_roi {roi} reaches beyond the camera's {width}x{height} frame") == 1, log[-3000:]
