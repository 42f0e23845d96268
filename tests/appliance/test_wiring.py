"""``appliance/wiring.py``: one set of defaults (the config spec's), and the graph it composes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance import wiring
from appliance.config import Config, default, parse_config
from appliance.mqtt.publisher import PublisherConfig
from appliance.scoring.pipeline import PipelineConfig
from appliance.scoring.quality import QualityConfig
from appliance.scoring.windows import WindowConfig
from appliance.sources.camera import CameraConfig
from appliance.sources.face import FaceConfig
from appliance.sources.microphone import MicrophoneConfig


def test_stages_built_from_an_empty_config_use_their_own_defaults() -> None:
    """A stage made with only its required arguments (as tests and tools make them) equals the stage the
    daemon builds from an empty config file: the spec's defaults are the stages' defaults."""
    config = parse_config("")
    s = wiring.source_settings(config)
    assert s.camera == CameraConfig(source=config.camera.source, fps=config.camera.fps, width=config.camera.width,
                                    height=config.camera.height)
    assert s.face == FaceConfig()
    assert s.microphone == MicrophoneConfig()
    assert s.monitor is not None and (s.monitor.port, s.monitor.protocol, s.monitor.baudrate) == (
        default("monitor", "port"), default("monitor", "protocol"), default("monitor", "baud"))
    assert wiring.window_config(config) == WindowConfig()
    assert wiring.pipeline_config(config) == PipelineConfig()
    built = wiring.publisher_config(config)
    plain = PublisherConfig(host=built.host, site=built.site, bed=built.bed, device_id=built.device_id,
                            outbox_path=built.outbox_path, client_id=built.client_id)
    assert built == plain


def test_the_defaults_that_used_to_disagree_are_the_specs() -> None:
    """The four that differed before (score expiry 10 vs 60 s, outbox rows 100000 vs 10000, video max age 1.0
    vs 0.5 s, microphone period 1024 vs 512) and the others mapped by wiring."""
    spec = Config()
    assert PublisherConfig.__dataclass_fields__["score_expiry_s"].default == spec.mqtt.message_expiry_s
    assert PublisherConfig.__dataclass_fields__["outbox_max_rows"].default == spec.outbox.max_rows
    assert PublisherConfig.__dataclass_fields__["publish_vitals"].default == spec.mqtt.publish_vitals
    assert WindowConfig().video_max_age_s == spec.scoring.max_age_video_s
    assert WindowConfig().audio_max_age_s == spec.scoring.max_age_audio_s
    assert WindowConfig().vitals_max_age_s == WindowConfig().rr_max_age_s == spec.scoring.max_age_vitals_s
    assert MicrophoneConfig().period_size == spec.microphone.period_frames
    assert CameraConfig(source=0).watchdog_s == spec.camera.reopen_after_s
    assert FaceConfig().crop_size == spec.camera.face_crop_size
    assert PipelineConfig().cadence_s == spec.scoring.cadence_s
    w, q = WindowConfig(), QualityConfig()
    assert (w.min_fill_video, w.min_audio_coverage, w.min_fill_vitals) == (
        spec.scoring.min_fill_video, spec.scoring.min_fill_audio, spec.scoring.min_fill_vitals)
    assert (q.min_face_px, q.min_face_contrast, q.min_face_detail) == (
        spec.scoring.min_face_px, spec.scoring.min_face_contrast, spec.scoring.min_face_detail)
    assert PipelineConfig().quality == q


def test_every_scoring_and_source_key_reaches_its_stage(tmp_path: Path) -> None:
    """Non-default values travel: each key set in the file shows up in the stage config wiring builds."""
    config = parse_config(f"""
[camera]
source = "/dev/video3"
kind = "device"
fps = 15.0
width = 640
height = 480
reopen_after_s = 7.5
face_crop_size = 64
loop = true
face_roi = [1, 2, 30, 40]
face_detector = "haar"
[microphone]
device = "hw:1,0"
period_frames = 256
pace_realtime = true
[monitor]
port = "/dev/ttyS3"
baud = 115200
protocol = "masimo"
[scoring]
cadence_s = 1.5
max_age_video_s = 0.7
max_age_audio_s = 0.9
max_age_vitals_s = 9.0
min_fill_video = 0.6
min_fill_audio = 0.7
min_fill_vitals = 0.4
min_face_px = 48
min_face_contrast = 6.5
min_face_detail = 3.5
[mqtt]
host = "broker.ward"
port = 8883
keepalive_s = 45
message_expiry_s = 20
health_interval_s = 12.0
publish_vitals = true
qos = 2
confirm_grace_s = 5.0
[outbox]
path = "{tmp_path / 'o.sqlite3'}"
max_rows = 77
[debug]
save_raw_media = true
""")
    s = wiring.source_settings(config)
    assert s.camera == CameraConfig(source="/dev/video3", kind="device", fps=15.0, width=640, height=480,
                                    watchdog_s=7.5, loop=True)
    assert s.face == FaceConfig(crop_size=64, roi=(1, 2, 30, 40), detector="haar")
    assert s.microphone == MicrophoneConfig(device="hw:1,0", period_size=256, pace_realtime=True)
    assert (s.monitor.port, s.monitor.protocol, s.monitor.baudrate) == ("/dev/ttyS3", "masimo", 115200)
    w = wiring.window_config(config)
    assert (w.video_max_age_s, w.audio_max_age_s, w.vitals_max_age_s, w.rr_max_age_s) == (0.7, 0.9, 9.0, 9.0)
    assert (w.min_fill_video, w.min_audio_coverage, w.min_fill_vitals) == (0.6, 0.7, 0.4)
    p = wiring.pipeline_config(config)
    assert p.cadence_s == 1.5 and p.raw_media_dir == tmp_path / wiring.RAW_MEDIA_DIR_NAME
    assert p.quality == wiring.quality_config(config) == QualityConfig(min_face_px=48, min_face_contrast=6.5,
                                                                         min_face_detail=3.5)
    pub = wiring.publisher_config(config)
    assert (pub.host, pub.port, pub.keepalive_s, pub.score_expiry_s, pub.health_interval_s, pub.publish_vitals,
            pub.outbox_max_rows, pub.outbox_path) == ("broker.ward", 8883, 45, 20.0, 12.0, True, 77,
                                                      tmp_path / "o.sqlite3")
    assert (pub.qos, pub.confirm_grace_s) == (2, 5.0)


@pytest.mark.parametrize("section", ["camera", "microphone", "monitor"])
def test_a_disabled_sensor_is_not_opened(section: str) -> None:
    config = parse_config(f"[{section}]\nenabled = false\n")
    settings = wiring.source_settings(config)
    assert getattr(settings, section) is None
    if section == "camera":
        assert settings.face is None


def test_default_names_a_missing_key() -> None:
    with pytest.raises(KeyError, match="no key 'nope'"):
        default("scoring", "nope")
    with pytest.raises(KeyError, match="no config section"):
        default("nope", "cadence_s")
    assert dataclasses.is_dataclass(Config())
