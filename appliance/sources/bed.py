"""The bed's sensors as one unit: camera + face tracker, microphone, patient monitor, each on its own thread.

Why sinks are callables: the same sensors feed three programs -- the daemon (ring buffers, the cry detector,
vitals on MQTT), ``neopain commission`` (evidence for the bedside checks) and ``calibrate capture-int8``
(buffers for INT8 windows). Each passes its own :class:`Sinks`; :class:`BedSources` owns the drivers, opens
only the enabled ones (the settings are ``None`` for a disabled sensor), says which are open and delivering,
and guarantees that a failing sink is counted and logged but never raises into a driver's loop.

Supervision: every driver thread (camera capture and watchdog, microphone, monitor reader) runs under
:class:`appliance.sources.supervise.SupervisedThread`, so a thread that dies of anything is journalled with
its exception and started again with backoff; :meth:`BedSources.restarts` gives the count per source for the
health message (``source_restarts``) and :meth:`BedSources.why_down` names the last crash.

The stage settings come from :func:`appliance.wiring.source_settings`, the one place where the config's
``[camera]``, ``[microphone]`` and ``[monitor]`` tables become driver configs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from appliance.sources.camera import CameraConfig, Frame
from appliance.sources.face import FaceConfig, FaceObservation
from appliance.sources.microphone import AudioPeriod, MicrophoneConfig

log = logging.getLogger(__name__)

#: A source that has delivered nothing for this long is reported down (health, journal, STATUS=).
DELIVERY_TIMEOUT_S = 5.0
#: How long start-up (the daemon's READY, a commissioning capture) waits for the enabled sources to open.
SOURCE_OPEN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class MonitorConfig:
    """The monitor's serial link (``[monitor]``): port, protocol (``auto`` detects it) and speed."""

    port: str
    protocol: str
    baudrate: int


@dataclass(frozen=True)
class SourceSettings:
    """What to open; ``None`` for a sensor that is disabled in the config."""

    camera: CameraConfig | None
    face: FaceConfig | None
    microphone: MicrophoneConfig | None
    monitor: MonitorConfig | None


@dataclass(frozen=True)
class Sinks:
    """Where the sensors' data goes; each runs on its sensor's thread and must return quickly.

    ``frame`` gets the camera frame and the face tracker's observation of it; ``audio`` one ALSA period;
    ``monitor`` a ``VitalSample``, ``RRIntervals`` or ``WaveChunk`` from the monitor reader.
    """

    frame: Callable[[Frame, FaceObservation], None] | None = None
    audio: Callable[[AudioPeriod], None] | None = None
    monitor: Callable[[Any], None] | None = None


class BedSources:
    """The enabled sensors of one bed; :meth:`open` starts them, :meth:`close` stops them."""

    def __init__(self, settings: SourceSettings, sinks: Sinks) -> None:
        self.settings = settings
        self.sinks = sinks
        self.camera: Any = None
        self.tracker: Any = None
        self.microphone: Any = None
        self.monitor: Any = None
        self.sink_errors = 0

    def open(self) -> "BedSources":
        s = self.settings
        if s.camera is not None:
            from appliance.sources.camera import Camera
            from appliance.sources.face import FaceTracker

            self.tracker = FaceTracker(s.face or FaceConfig())
            self.camera = Camera(s.camera, self._on_frame).start()
        if s.microphone is not None:
            from appliance.sources.microphone import Microphone

            self.microphone = Microphone(s.microphone, self._on_audio).start()
        if s.monitor is not None:
            from appliance.sources.monitor.reader import MonitorReader

            self.monitor = MonitorReader(s.monitor.port, self._on_monitor, protocol=s.monitor.protocol,
                                         baudrate=s.monitor.baudrate).start()
        return self

    # Driver threads call these: hand over and return, never raise into a driver loop.
    def _on_frame(self, frame: Frame) -> None:
        self._deliver("camera", self.sinks.frame, lambda sink: sink(frame, self.tracker.process(frame)))

    def _on_audio(self, period: AudioPeriod) -> None:
        self._deliver("microphone", self.sinks.audio, lambda sink: sink(period))

    def _on_monitor(self, item: Any) -> None:
        self._deliver("monitor", self.sinks.monitor, lambda sink: sink(item))

    def _deliver(self, name: str, sink: Callable[..., None] | None, call: Callable[[Any], None]) -> None:
        if sink is None:
            return
        try:
            call(sink)
        except Exception:
            self.sink_errors += 1
            log.exception("%s sink failed", name)

    # -- health ----------------------------------------------------------------------------------------
    def up(self) -> dict[str, bool]:
        """Enabled source -> open and delivering now (a monitor whose port is open but that sends nothing
        usable, e.g. garbage on the line, is down: nothing stale or invented is shown as current)."""
        out: dict[str, bool] = {}
        if self.camera is not None:
            h = self.camera.health()
            out["camera"] = bool(h.open and h.last_frame_age_s is not None and h.last_frame_age_s < DELIVERY_TIMEOUT_S)
        if self.microphone is not None:
            h = self.microphone.health()
            out["microphone"] = bool(h.open and h.last_period_age_s is not None
                                     and h.last_period_age_s < DELIVERY_TIMEOUT_S)
        if self.monitor is not None:
            h = self.monitor.health()
            last = h.last_sample_mono_ns
            out["monitor"] = bool(h.connected and last is not None
                                  and time.monotonic_ns() - last < DELIVERY_TIMEOUT_S * 1e9)
        return out

    def why_down(self, name: str) -> str:
        """One line for the journal: why source ``name`` is not delivering (its last error, rejects)."""
        source = getattr(self, name, None)
        if source is None:
            return "not enabled"
        h = source.health()
        parts = [f"last error: {h.last_error}" if getattr(h, "last_error", None)
                 else f"no data for {DELIVERY_TIMEOUT_S:g} s"]
        if name == "monitor":
            parts.insert(0, "port open" if h.connected else "port closed")
            if h.rejects:
                parts.append("rejected " + ", ".join(f"{k} x{v}" for k, v in sorted(h.rejects.items())))
        if getattr(h, "thread_restarts", 0):
            parts.append(f"driver thread restarted {h.thread_restarts} times")
        return "; ".join(parts)

    def restarts(self) -> dict[str, int]:
        """Enabled source -> how many times its driver thread died and was restarted (health)."""
        return {name: int(getattr(source.health(), "thread_restarts", 0)) for name, source in self._enabled()}

    def _enabled(self) -> list[tuple[str, Any]]:
        return [(name, source) for name in ("camera", "microphone", "monitor")
                if (source := getattr(self, name)) is not None]

    def opened(self) -> dict[str, bool]:
        """Enabled source -> has opened (not yet necessarily delivering): what READY waits for."""
        out: dict[str, bool] = {}
        if self.camera is not None:
            out["camera"] = bool(self.camera.health().open)
        if self.microphone is not None:
            out["microphone"] = bool(self.microphone.health().open)
        if self.monitor is not None:
            out["monitor"] = bool(self.monitor.health().connected)
        return out

    def fps(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.camera is not None:
            out["camera"] = round(float(self.camera.health().fps_measured), 2)
        return out

    def close(self) -> None:
        for name in ("camera", "microphone", "monitor"):
            source = getattr(self, name)
            if source is None:
                continue
            try:
                source.stop()
            except Exception as exc:  # a stuck driver thread must not block shutdown of the rest
                log.warning("%s did not stop cleanly: %s", name, exc)
