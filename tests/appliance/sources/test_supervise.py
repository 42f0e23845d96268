"""Supervised driver threads: a thread killed by an exception nobody handles is logged, restarted with backoff
and counted, for the camera (OpenCV on a real video file), the microphone and the monitor reader (a real pty,
through BedSources up to the daemon's health message)."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from appliance.config import parse_config
from appliance.daemon import Daemon
from appliance.mqtt import messages
from appliance.sources.bed import BedSources, MonitorConfig, Sinks, SourceSettings
from appliance.sources.camera import Camera, CameraConfig, Frame
from appliance.sources.microphone import AudioPeriod, Microphone, MicrophoneConfig
from appliance.sources.monitor.masimo import format_line
from appliance.sources.monitor.types import VitalSample
from appliance.sources.supervise import SupervisedThread
from tests.appliance.sources.source_helpers import level, raw_pty, write_video





class DriverKilled(BaseException):
    """What no handler in a driver expects (they catch ``Exception``): it ends the thread unless supervised."""


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ------------------------------------------------------------------------------------------------ the supervisor
def test_a_loop_that_dies_is_logged_and_restarted_with_growing_backoff(caplog: pytest.LogCaptureFixture) -> None:
    runs, waits = [], []

    def loop() -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise ValueError(f"boom {len(runs)}")

    def wait(seconds: float) -> bool:  # records the backoff instead of sleeping it
        waits.append(seconds)
        return False

    with caplog.at_level(logging.ERROR, logger="appliance.sources.supervise"):
        t = SupervisedThread("driver-x", loop, keep_running=lambda: True, wait=wait, backoff_s=(0.5, 1.0)).start()
        t.join(5)
    assert not t.is_alive() and len(runs) == 4  # died three times, the fourth run returned: the thread ends
    assert t.restarts == 3 and t.last_crash == "ValueError: boom 3"
    assert waits == [0.5, 1.0, 1.0]  # doubling, capped
    died = [r for r in caplog.records if "driver thread died" in r.getMessage()]
    assert len(died) == 3 and died[0].exc_info is not None and "driver-x" in died[0].getMessage()
    assert "ValueError: boom 1" in died[0].getMessage() and "restart 1 in 0.5 s" in died[0].getMessage()


def test_no_restart_while_stopping_and_a_stop_ends_the_backoff() -> None:
    stop = threading.Event()

    def loop() -> None:
        stop.set()
        raise RuntimeError("the device went away as we were stopping")

    t = SupervisedThread("driver-y", loop, keep_running=lambda: not stop.is_set(), wait=stop.wait).start()
    t.join(5)
    assert not t.is_alive() and t.restarts == 0
    stop2 = threading.Event()
    t2 = SupervisedThread("driver-z", lambda: (_ for _ in ()).throw(RuntimeError("x")),
                          keep_running=lambda: not stop2.is_set(), wait=stop2.wait, backoff_s=(60.0, 60.0)).start()
    assert wait_for(lambda: t2.restarts == 1)
    stop2.set()  # it is waiting out a 60 s backoff: the stop ends it at once
    t2.join(5)
    assert not t2.is_alive()
    with pytest.raises(ValueError, match="backoff_s"):
        SupervisedThread("bad", lambda: None, keep_running=lambda: True, wait=stop.wait, backoff_s=(0.0, 1.0))


# ------------------------------------------------------------------------------------------------ camera
def test_camera_capture_thread_killed_is_restarted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_video(tmp_path / "v.avi", 5, 100.0)
    frames: list[Frame] = []
    lock = threading.Lock()

    def sink(frame: Frame) -> None:
        with lock:
            frames.append(frame)
            if len(frames) == 2:
                raise DriverKilled("a sink raised what nobody catches")

    # (the watchdog is set far off: only the crash may restart the file, however slow the machine)
    config = CameraConfig(str(path), loop=True, watchdog_s=120.0, reopen_backoff_s=0.05, reopen_backoff_max_s=0.1)
    with caplog.at_level(logging.ERROR, logger="appliance.sources.supervise"):
        with Camera(config, sink) as cam:
            assert wait_for(lambda: len(frames) >= 6)
            h = cam.health()
    assert h.thread_restarts == 1 and "driver thread died: DriverKilled" in (h.last_error or "")
    with lock:
        levels = [level(f) for f in frames[:6]]
    assert levels[:2] == [0, 1] and levels[2:] == [0, 1, 2, 3]  # restarted: the file is opened again
    assert any("camera-capture-1: driver thread died" in r.getMessage() for r in caplog.records)


def test_the_issue_s_nan_kills_are_now_logged_retries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reported faults, with the NaN forced past the config's checks (as anything unforeseen would be):
    ``fps = nan`` made the capture thread raise in its pacing, ``reopen_after_s = nan`` the watchdog at
    ``int(nan)``. Both threads are now restarted with backoff, logged each time, counted in health."""
    path = write_video(tmp_path / "v.avi", 5, 100.0)
    config = CameraConfig(str(path), loop=True, reopen_backoff_s=0.05, reopen_backoff_max_s=0.1)
    object.__setattr__(config, "fps", float("nan"))  # what CameraConfig now refuses, slipped through
    object.__setattr__(config, "watchdog_s", float("nan"))
    with caplog.at_level(logging.ERROR, logger="appliance.sources.supervise"):
        with Camera(config, lambda frame: None) as cam:
            assert wait_for(lambda: cam.health().thread_restarts >= 4)
            alive = cam._watchdog.is_alive() and any(t.is_alive() for t in cam._threads)
    died = [r.getMessage() for r in caplog.records if "driver thread died" in r.getMessage()]
    assert alive  # still there, retrying: what the journal always claimed
    assert any(m.startswith("camera-watchdog: driver thread died (ValueError") for m in died)
    assert any(m.startswith("camera-capture-1: driver thread died (ValueError") and "fps" in m for m in died)


@pytest.mark.parametrize("field, value", [("fps", float("nan")), ("watchdog_s", float("nan")),
                                          ("watchdog_s", 0.0), ("fps", float("inf")), ("width", 0)])
def test_camera_config_refuses_what_once_killed_its_threads(field: str, value: float) -> None:
    """``fps = nan`` killed the capture thread, ``reopen_after_s = nan`` the watchdog: refused at once now."""
    with pytest.raises(ValueError, match=f"CameraConfig.{field}"):
        CameraConfig("bed.avi", **{field: value})


# ------------------------------------------------------------------------------------------------ microphone
class _Pcm:
    """A capture device delivering a counting signal, one 256-frame period per read (about 1 ms each)."""

    opened = 0

    def __init__(self) -> None:
        _Pcm.opened += 1
        self.n = 0

    def read(self) -> tuple[int, bytes]:
        time.sleep(0.001)  # a device's own pace (the data do not depend on it)
        x = (np.arange(256) + 256 * self.n).astype("<i2")
        self.n += 1
        return 256, x.tobytes()

    def close(self) -> None:
        pass


def test_microphone_thread_killed_is_restarted_and_the_gap_flagged() -> None:
    got: list[AudioPeriod] = []

    def sink(period: AudioPeriod) -> None:
        got.append(period)
        if len(got) == 3:
            raise DriverKilled("a sink raised what nobody catches")

    _Pcm.opened = 0
    mic = Microphone(MicrophoneConfig(device="fake", period_size=256, reopen_backoff_s=0.01), sink,
                     pcm_factory=lambda cfg: _Pcm())
    with mic:
        assert wait_for(lambda: len(got) >= 6)
        h = mic.health()
    assert h.thread_restarts == 1 and h.reopen_count == 1 and _Pcm.opened == 2
    assert "driver thread died: DriverKilled" in (h.last_error or "")
    assert [p.gap_before for p in got[:5]] == [False, False, False, True, False]  # audio lost in between


# ------------------------------------------------------------------------------------------------ monitor


def test_monitor_thread_killed_is_restarted_and_counted_in_health() -> None:
    """BedSources' monitor on a real pty: its sink kills the reader thread at the first reading; the reader is
    restarted, reopens the port and delivers the next line; the daemon's health message carries the count."""
    got: list[VitalSample] = []

    def sink(item: object) -> None:
        got.append(item)  # type: ignore[arg-type]
        if len(got) == 1:
            raise DriverKilled("a sink raised what nobody catches")

    with raw_pty() as (master, path):
        settings = SourceSettings(camera=None, face=None, microphone=None,
                                  monitor=MonitorConfig(port=path, protocol="masimo", baudrate=9600))
        sources = BedSources(settings, Sinks(monitor=sink)).open()
        try:
            assert wait_for(lambda: sources.opened()["monitor"])
            os.write(master, format_line(97, 140, 1.5))
            assert wait_for(lambda: sources.restarts() == {"monitor": 1})
            assert wait_for(lambda: sources.monitor.health().connected)  # reopened after the backoff
            os.write(master, format_line(96, 141, 1.5))
            assert wait_for(lambda: len(got) >= 2)
            daemon = Daemon(parse_config(""))
            daemon.sources = sources
            fields = daemon.health_fields()
            why = sources.why_down("monitor")
        finally:
            sources.close()
    assert [(s.spo2, s.pulse_rate) for s in got] == [(97, 140), (96, 141)]
    assert fields["source_restarts"] == {"monitor": 1}
    assert "driver thread restarted 1 times" in why
    health = messages.build_health(device_id="d", **fields)
    jsonschema.validate(health, messages.HEALTH_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert health["source_restarts"] == {"monitor": 1}


def test_health_source_restarts_schema() -> None:
    """Optional in the health message: absent when not given; counts are integers >= 0, keys name sources."""
    v = jsonschema.Draft202012Validator(messages.HEALTH_SCHEMA)
    plain = messages.build_health(device_id="d", sources={"camera": True})
    assert "source_restarts" not in plain and v.is_valid(plain)
    with_counts = messages.build_health(device_id="d", sources={"camera": True}, source_restarts={"camera": 2})
    assert v.is_valid(with_counts)
    assert not v.is_valid({**with_counts, "source_restarts": {"camera": -1}})
    assert not v.is_valid({**with_counts, "source_restarts": {"camera": 1.5}})
    with pytest.raises(ValueError, match="^source_restarts.camera:"):
        messages.build_health(device_id="d", sources={}, source_restarts={"camera": -1})
