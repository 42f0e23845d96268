"""The scoring graph of one bed, composed in one place from the appliance config.

Why one module: the path from a sensor to a published score crosses the sources, the ring buffers, the
window builder, the quality gate, the engines, the calibration stage and the publisher. Each stage has its
own small config dataclass and knows nothing of the TOML file; this module is the only place where config
sections become stage configs (so there is one set of defaults, the spec's: ``tests/appliance/test_wiring.py``
builds every stage from an empty config and compares), and :func:`build` names every stage and edge of the
graph on one screen::

    camera -> face tracker --\\
    microphone --------------+-> ModalityBuffers -> WindowBuilder -> prepare (quality gate, model inputs)
       \\-> CryDetector ------/                                        -> engines -> calibration -> Publisher
    monitor -> vitals, RR ---/ (and HR/SpO2 -> Publisher.publish_vitals when [mqtt] publish_vitals)
    each cycle -> CalibrationRecorder (calibration sessions: raw score beside nurse ratings)

The daemon (``appliance/daemon.py``) owns the order of start-up around it: publisher first (so health can say
what is wrong), engines, then :func:`build`, then the sources and the loop. ``calibrate capture-int8`` and
``neopain commission`` open the same sensors through :func:`source_settings` and :func:`buffer_sinks`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from appliance.config import Config, command_key, mqtt_tls_keyfile, secret_path
from appliance.mqtt.publisher import PublisherConfig
from appliance.scoring.buffers import ModalityBuffers, VitalsSample, extend_rr
from appliance.scoring.clip_frames import ClipFrames, ClipGrid
from appliance.scoring.calibration_stage import CalibrationStage
from appliance.scoring.pipeline import PipelineConfig, ScoringPipeline
from appliance.scoring.presence_debounce import DebounceConfig
from appliance.scoring.quality import QualityConfig
from appliance.scoring.windows import WindowBuilder, WindowConfig
from appliance.sources.bed import BedSources, MonitorConfig, Sinks, SourceSettings
from appliance.sources.camera import CameraConfig
from appliance.sources.face import FaceConfig
from appliance.sources.microphone import MicrophoneConfig

log = logging.getLogger(__name__)

RAW_MEDIA_DIR_NAME = "raw-media"  # debug.save_raw_media: beside the outbox, in the device's state directory


# ------------------------------------------------------------------------------------- config -> stage configs
def source_settings(config: Config) -> SourceSettings:
    """``[camera]``, ``[microphone]``, ``[monitor]`` as driver configs (None for a disabled sensor)."""
    cam, mic, mon = config.camera, config.microphone, config.monitor
    camera = CameraConfig(source=cam.source, kind=None if cam.kind == "auto" else cam.kind, fps=cam.fps,
                          width=cam.width, height=cam.height, watchdog_s=cam.reopen_after_s,
                          loop=cam.loop) if cam.enabled else None
    face = FaceConfig(crop_size=cam.face_crop_size, detector=cam.face_detector,
                      roi=tuple(cam.face_roi) if cam.face_roi else None) if cam.enabled else None
    microphone = MicrophoneConfig(device=mic.device, rate=mic.rate, period_size=mic.period_frames,
                                  pace_realtime=mic.pace_realtime) if mic.enabled else None
    monitor = MonitorConfig(port=mon.port, protocol=mon.protocol, baudrate=mon.baud) if mon.enabled else None
    return SourceSettings(camera=camera, face=face, microphone=microphone, monitor=monitor)


def window_config(config: Config) -> WindowConfig:
    """The window builder's freshness limits from ``[scoring] max_age_*`` and least fills from ``min_fill_*``
    (the daemon and ``calibrate capture-int8`` cut windows alike, so INT8 calibration windows are the scored
    ones)."""
    s = config.scoring
    return WindowConfig(video_max_age_s=s.max_age_video_s, audio_max_age_s=s.max_age_audio_s,
                        vitals_max_age_s=s.max_age_vitals_s, rr_max_age_s=s.max_age_vitals_s,
                        min_fill_video=s.min_fill_video, min_audio_coverage=s.min_fill_audio,
                        min_fill_vitals=s.min_fill_vitals)


def quality_config(config: Config) -> QualityConfig:
    """The quality gate's video limits from ``[scoring] min_face_px``, ``min_face_contrast``, ``min_face_detail``."""
    s = config.scoring
    return QualityConfig(min_face_px=s.min_face_px, min_face_contrast=s.min_face_contrast,
                         min_face_detail=s.min_face_detail)


def pipeline_config(config: Config) -> PipelineConfig:
    """Cadence, the quality gate and (with ``[debug] save_raw_media``) the device-local folder for scored
    windows."""
    raw_dir = Path(config.outbox.path).parent / RAW_MEDIA_DIR_NAME if config.debug.save_raw_media else None
    s = config.scoring
    return PipelineConfig(cadence_s=s.cadence_s, quality=quality_config(config), raw_media_dir=raw_dir,
                          presence=DebounceConfig(lost_after_s=s.modality_lost_after_s,
                                                  back_after_s=s.modality_back_after_s))


def publisher_config(config: Config) -> PublisherConfig:
    """``[device]``, ``[mqtt]`` and ``[outbox]`` for the publisher (secrets as paths, never as text)."""
    m = config.mqtt
    password, _ = secret_path(config, m.password_credential, "password_file")
    return PublisherConfig(
        host=m.host, port=m.port, site=config.device.site, bed=config.device.bed, device_id=config.device.id,
        outbox_path=Path(config.outbox.path), client_id=config.mqtt_client_id, keepalive_s=m.keepalive_s,
        username=m.username or None, password_file=password if m.username else None,
        tls_ca=Path(m.tls_ca_file) if m.tls_ca_file else None,
        tls_cert=Path(m.tls_cert_file) if m.tls_cert_file else None,
        tls_key=mqtt_tls_keyfile(config),
        score_expiry_s=float(m.message_expiry_s), health_interval_s=m.health_interval_s,
        outbox_max_rows=config.outbox.max_rows, publish_vitals=m.publish_vitals, command_key=command_key(config),
        confirm_grace_s=m.confirm_grace_s,
        qos=m.qos,
    )


def calibration_stage(config: Config, model_version: str | None) -> CalibrationStage:
    """``[calibration]``: the installed map or bundle for this model (signed bundles required once a device
    key is set). Raises :class:`appliance.scoring.calibration_map.CalibrationError` for an invalid one."""
    key_file = config.calibration.key_file or None
    return CalibrationStage(config.calibration.bundle or None, model_version=model_version, key_file=key_file,
                            require_signature=key_file is not None)


# ------------------------------------------------------------------------------------- sinks
def buffer_sinks(buffers: ModalityBuffers, cry: Any = None,
                 on_vitals: Callable[[VitalsSample], None] | None = None, *,
                 clip_grid: ClipGrid | None = None) -> Sinks:
    """The sensors -> ring buffers edges: face samples (the crop with the face's size in camera pixels), audio
    periods (and the cry detector), vitals and RR intervals; ``on_vitals`` also receives each HR/SpO2 reading
    (the publisher's vitals topic). ``clip_grid``: the window builder's (``WindowBuilder.grid``; default: that
    of the default window), so that the camera thread resizes exactly the faces the builder's clips take
    (:class:`appliance.scoring.clip_frames.ClipFrames`)."""
    from appliance.sources.monitor.types import RRIntervals, VitalSample

    def on_audio(period: Any) -> None:
        buffers.audio.append(period)
        if cry is not None:
            cry.push_period(period)

    def on_monitor(item: Any) -> None:
        if isinstance(item, VitalSample):
            sample = VitalsSample.from_monitor(item)
            buffers.vitals.append(sample)
            if on_vitals is not None:
                on_vitals(sample)
        elif isinstance(item, RRIntervals):
            extend_rr(buffers.rr, item)

    grid = clip_grid if clip_grid is not None else ClipGrid(WindowConfig().frame_fps)
    return Sinks(frame=ClipFrames(buffers.frames, grid), audio=on_audio, monitor=on_monitor)


# ------------------------------------------------------------------------------------- the graph
@dataclass
class ScoringGraph:
    """Every stage of one bed's scoring path, built but not started (the daemon starts them in order)."""

    buffers: ModalityBuffers
    cry: Any  # models.features.cry.CryDetector when the microphone is enabled
    sources: BedSources
    builder: WindowBuilder
    calibration: CalibrationStage
    recorder: Any  # appliance.scoring.ratings.CalibrationRecorder, or None when its store cannot be opened
    pipeline: ScoringPipeline


def build(config: Config, *, engines: Any, model_config: Any, publisher: Any, watchdog: Any = None) -> ScoringGraph:
    """The graph from the sources to the publisher, for engines already loaded and a publisher already made."""
    from models.features.cry import CryDetector

    calibration = calibration_stage(config, engines.model_version)  # first: a bad map stops before anything opens
    buffers = ModalityBuffers()
    cry = CryDetector() if config.microphone.enabled else None

    def publish_vitals(sample: VitalsSample) -> None:
        publisher.publish_vitals(t_mono_ns=sample.t_ns, hr_bpm=sample.hr_bpm, spo2_pct=sample.spo2_pct,
                                 source=sample.source or None)

    builder = WindowBuilder(buffers, window_config(config), cry=cry)
    sources = BedSources(source_settings(config),
                         buffer_sinks(buffers, cry, on_vitals=publish_vitals, clip_grid=builder.grid))
    recorder = open_rating_recorder(config)
    pipeline = ScoringPipeline(builder, engines, calibration, publisher, model_config=model_config,
                               config=pipeline_config(config), watchdog=watchdog,
                               on_cycle=recorder.on_cycle if recorder is not None else None)
    return ScoringGraph(buffers, cry, sources, builder, calibration, recorder, pipeline)


def open_rating_recorder(config: Config) -> Any:
    """Calibration sessions (pairs of raw score and nurse rating), started. The daemon owns the state
    directory, so a damaged file is moved aside and salvaged (``appliance/storage.py``); a store that cannot
    be opened at all gives a recorder without one, which says why (naming the file) to commands and health:
    scoring goes on without it."""
    from appliance.scoring.ratings import CalibrationRecorder, SessionStore

    db = Path(config.calibration.sessions_db)
    try:
        return CalibrationRecorder(SessionStore(db, heal=True)).start()
    except Exception as exc:  # sqlite3.Error, OSError: a broken sessions store must not stop scoring
        reason = str(exc) if str(db) in str(exc) else f"{db}: {exc}"
        log.error("calibration sessions unavailable: %s", reason)
        return CalibrationRecorder(None, unavailable=f"calibration sessions unavailable: {reason}"[:300]).start()
