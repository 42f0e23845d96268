"""Collecting commissioning evidence from the bed's real sensors, opened exactly as the daemon opens them.

Why through :class:`appliance.sources.bed.BedSources` and :func:`appliance.wiring.source_settings`:
commissioning must test the device the daemon will use -- the same config mapping, camera/face tracker, ALSA
PCM and serial protocol -- so it opens the daemon's sources and only brings its own three sinks. The sinks run on the sources' own threads; they summarise as
they go (per-frame statistics, audio kept in memory only for the level trace, numerics values) and keep
one face snapshot. Nothing is written to disk here.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.clock import NS_PER_S, now_ns
from appliance.config import Config
from appliance.scoring.buffers import VitalsSample
from appliance.sources.bed import SOURCE_OPEN_TIMEOUT_S, BedSources, Sinks
from appliance.wiring import source_settings
from calibration.commission.metrics import (HR_RANGE, SPO2_RANGE, CameraSummary, MicrophoneSummary, MonitorSummary,
                                            clip_fraction, image_stats, level_trace, noise_floor_dbfs,
                                            plausible_fraction)

ECG_LABEL = "ECG_II"  # appliance.sources.monitor.reader.ECG_LABEL (not imported: it pulls in pyserial)


@dataclass
class Snapshot:
    """The frame of the last face observation (BGR), its face box (the fixed ROI in ROI mode), and whether
    the face detector confirmed it on this very frame rather than the tracker carrying it over."""

    image: np.ndarray
    box: tuple[int, int, int, int] | None
    detected: bool


@dataclass
class Evidence:
    """Everything the sinks gathered (guarded by ``lock`` while sources run)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    frames: int = 0
    face_frames: int = 0
    frame_stats: list[tuple[float, float, float]] = field(default_factory=list)
    snapshot: Snapshot | None = None
    face_snapshot: Snapshot | None = None
    audio: list[np.ndarray] = field(default_factory=list)
    audio_rate: int = 16000
    first_audio_ns: int | None = None
    last_audio_ns: int | None = None
    vitals: list[VitalsSample] = field(default_factory=list)
    ecg_chunks: int = 0
    rr_ms: list[float] = field(default_factory=list)
    rr_t_ns: list[int] = field(default_factory=list)


def evidence_sinks(ev: Evidence) -> Sinks:
    """Sinks that gather :class:`Evidence` instead of filling ring buffers (they run on the sensors' threads)."""

    def on_frame(frame: Any, obs: Any) -> None:
        region = obs.crop if obs.crop is not None else frame.image
        stats = image_stats(region)
        with ev.lock:
            ev.frames += 1
            ev.frame_stats.append((stats.brightness, stats.contrast, stats.blur_variance))
            if obs.crop is not None:
                ev.face_frames += 1
                confirmed = obs.detected
                if confirmed or ev.face_snapshot is None:  # prefer a frame the detector confirmed
                    ev.face_snapshot = Snapshot(frame.image.copy(), obs.box, confirmed)
            elif ev.frames % 30 == 1:  # what the camera sees when it finds no face (only used then)
                ev.snapshot = Snapshot(frame.image.copy(), None, False)

    def on_audio(period: Any) -> None:
        with ev.lock:
            ev.audio.append(np.asarray(period.samples).copy())
            ev.audio_rate = int(period.rate)
            if ev.first_audio_ns is None:
                ev.first_audio_ns = int(period.start_ns)
            ev.last_audio_ns = int(period.t_ns)

    def on_monitor(item: Any) -> None:
        from appliance.sources.monitor.types import RRIntervals, VitalSample, WaveChunk

        with ev.lock:
            if isinstance(item, VitalSample):
                ev.vitals.append(VitalsSample.from_monitor(item))
            elif isinstance(item, WaveChunk):
                ev.ecg_chunks += int(item.label == ECG_LABEL and len(item.samples) > 0)
            elif isinstance(item, RRIntervals):
                for t, rr in zip(item.beat_t_mono_ns, item.rr_ms):
                    if np.isfinite(rr):
                        ev.rr_ms.append(float(rr))
                        ev.rr_t_ns.append(int(t))

    return Sinks(frame=on_frame, audio=on_audio, monitor=on_monitor)


@dataclass
class Collected:
    """The summaries of one commissioning capture, plus what the report plots."""

    config: Config
    duration_s: float
    started_ns: int
    camera: CameraSummary | None
    microphone: MicrophoneSummary | None
    monitor: MonitorSummary | None
    snapshot: Snapshot | None
    levels_dbfs: np.ndarray
    level_block_s: float
    vitals: list[VitalsSample]
    rr_t_ns: list[int]
    rr_ms: list[float]


def _preload(config: Config) -> None:
    """Import the enabled sources' modules before the clock starts: ``BedSources.open`` imports them lazily, and
    a cold import of the monitor reader (scipy) takes seconds on a loaded CPU -- time that is not the bed's."""
    import importlib

    for enabled, module in ((config.camera.enabled, "appliance.sources.face"),
                            (config.microphone.enabled, "models.features.cry"),
                            (config.microphone.enabled, "appliance.sources.microphone"),
                            (config.monitor.enabled, "appliance.sources.monitor.reader")):
        if enabled:
            importlib.import_module(module)


def collect(config: Config, duration_s: float, *, progress: bool = True,
            stop: threading.Event | None = None) -> Collected:
    """Open the enabled sources, gather for ``duration_s`` seconds (a tqdm bar on stderr), summarise."""
    from tqdm import tqdm

    from calibration.commission.metrics import LEVEL_BLOCK_S

    if not duration_s > 0:
        raise ValueError(f"duration must be > 0 s, got {duration_s!r}")
    _preload(config)
    ev = Evidence()
    sources = BedSources(source_settings(config), evidence_sinks(ev))
    stop = stop or threading.Event()
    try:
        sources.open()
        # The capture time starts once every enabled source has opened (as the daemon's READY does), bounded:
        # a source that never opens is then measured as delivering nothing.
        deadline = time.monotonic() + SOURCE_OPEN_TIMEOUT_S
        while not all(sources.opened().values()) and time.monotonic() < deadline and not stop.wait(0.05):
            pass
        started = now_ns()
        t0 = time.monotonic()
        with tqdm(total=round(duration_s), unit="s", desc="commissioning", disable=not progress,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s") as bar:
            while not stop.is_set():
                elapsed = time.monotonic() - t0
                bar.update(min(elapsed, duration_s) - bar.n)
                if elapsed >= duration_s:
                    break
                stop.wait(min(0.25, duration_s - elapsed))
        ended_ns = now_ns()
        camera_fps = sources.fps().get("camera", 0.0)
        monitor_health = sources.monitor.health() if sources.monitor is not None else None
        tracker = sources.tracker
        mode = tracker.mode if tracker is not None else "detect"
        detector = (tracker.detector_name, tracker.detector_fallback, tracker.config_error) if tracker else None
    finally:
        sources.close()
    elapsed_s = time.monotonic() - t0

    with ev.lock:
        camera = None
        if config.camera.enabled:
            st = np.asarray(ev.frame_stats, dtype=np.float64).reshape(-1, 3)
            med = np.median(st, axis=0) if len(st) else [None, None, None]
            camera = CameraSummary(ev.frames, ev.face_frames, *(None if m is None else float(m) for m in med),
                                   fps=float(camera_fps), mode=mode, detector=detector[0] if detector else None,
                                   detector_fallback=detector[1] if detector else None,
                                   config_error=detector[2] if detector else None)
        levels = np.zeros(0)
        microphone = None
        if config.microphone.enabled:
            pcm = np.concatenate(ev.audio) if ev.audio else np.zeros(0, np.int16)
            levels = level_trace(pcm, ev.audio_rate, LEVEL_BLOCK_S) if pcm.size else np.zeros(0)
            # expected from the first sample on: the device may take a moment to open, which is no loss
            span_s = (ended_ns - ev.first_audio_ns) / NS_PER_S if ev.first_audio_ns is not None else elapsed_s
            microphone = MicrophoneSummary(int(pcm.size), max(1, int(span_s * ev.audio_rate)), noise_floor_dbfs(levels),
                                           float(np.median(levels)) if len(levels) else None, clip_fraction(pcm))
        monitor = None
        if config.monitor.enabled:
            rr = np.asarray(ev.rr_ms)
            monitor = MonitorSummary(
                protocol=monitor_health.protocol if monitor_health is not None else None,
                samples=len(ev.vitals),
                hr_plausible=plausible_fraction([v.hr_bpm for v in ev.vitals], *HR_RANGE),
                spo2_plausible=plausible_fraction([v.spo2_pct for v in ev.vitals], *SPO2_RANGE),
                ecg_chunks=ev.ecg_chunks, rr_count=int(rr.size),
                rr_median_ms=float(np.median(rr)) if rr.size else None,
                rejects=dict(monitor_health.rejects) if monitor_health is not None else {})
        return Collected(config, elapsed_s, started, camera, microphone, monitor,
                         ev.face_snapshot or ev.snapshot, levels, LEVEL_BLOCK_S, list(ev.vitals), list(ev.rr_t_ns),
                         list(ev.rr_ms))
