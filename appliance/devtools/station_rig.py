"""A web station on a desk: mosquitto, ``neopain station run`` as a subprocess with one user, and many simulated
beds publishing real messages (``appliance.mqtt.messages`` builders, QoS 1, the daemon's message expiry, a
retained ``online`` status and health per bed), for the screenshots (``station_shots``) and the 200-bed
benchmark (``station_bench``).

Why beds without the daemon: the station's load is the message stream, and 200 daemons (or 200 ``Publisher``s
with their disk outboxes) would measure this machine's disk and scheduler instead. The messages are the
device's own, built the way the daemon builds them (monotonic window stamps mapped to UTC by the builder,
a durable-looking per-device sequence).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance import clock
from appliance.config import default
from appliance.mqtt import messages, topics
from models.vocabulary import NIPS_ITEM_MAXIMA, NIPS_MAX

USER, PASSWORD = "nurse.demo", "demo password 2026"
ALL_MODALITIES = ("video", "audio", "vitals")


def _utc(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def items_for(nips: float, profile: Mapping[str, float] | None = None) -> dict[str, float]:
    """Items that add up to ``nips`` as the device's do: in proportion to their maxima, or shaped by
    ``profile`` (item -> 0..1, which behaviours show) through the device's own scaling."""
    if profile is None:
        return {name: round(top * nips / NIPS_MAX, 4) for name, top in NIPS_ITEM_MAXIMA.items()}
    from appliance.scoring.pipeline import items_matching_total

    shaped = {name: profile.get(name, 0.0) * top for name, top in NIPS_ITEM_MAXIMA.items()}
    return {k: round(v, 4) for k, v in items_matching_total(shaped, NIPS_ITEM_MAXIMA, nips).items()}


@dataclass
class Bed:
    site: str
    bed: str
    device_id: str
    sequence: int = 0
    client: Any = None

    @property
    def prefix(self) -> str:
        return topics.bed_prefix(self.site, self.bed)


@dataclass
class SimBeds:
    """Simulated beds on ``clients`` MQTT connections; ``sent`` holds every score's message id per bed."""

    port: int
    beds: list[Bed]
    clients: int = 8
    expiry_s: float = default("mqtt", "message_expiry_s")
    sent: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    failed: int = 0
    _conns: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def ward(cls, port: int, count: int, *, site: str = "nicu", clients: int = 8) -> "SimBeds":
        return cls(port, [Bed(site, f"bed-{i + 1:03d}", f"sim-{i + 1:03d}") for i in range(count)], clients=clients)

    def start(self, *, health: Callable[[Bed], dict[str, Any]] | None = None) -> None:
        for i in range(min(self.clients, len(self.beds))):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"simbeds-{os.getpid()}-{i}",
                            protocol=mqtt.MQTTv5)
            c.max_queued_messages_set(0)
            c.max_inflight_messages_set(1000)
            c.connect("127.0.0.1", self.port, keepalive=30)
            c.loop_start()
            self._conns.append(c)
        for i, bed in enumerate(self.beds):
            bed.client = self._conns[i % len(self._conns)]
            bed.client.publish(topics.topic(bed.prefix, topics.STATUS), messages.STATUS_ONLINE, qos=1, retain=True)
            self.health(bed, **(health(bed) if health else {}))

    def health(self, bed: Bed, *, utc: str | None = None, **fields: Any) -> None:
        """A retained health message (``fields``: ``messages.build_health`` arguments; ``utc`` backdates it)."""
        fields.setdefault("sources", {"camera": True, "microphone": True, "monitor": True})
        msg = messages.build_health(device_id=bed.device_id, **fields)
        if utc is not None:
            msg["utc"] = utc
        bed.client.publish(topics.topic(bed.prefix, topics.HEALTH), messages.encode(msg), qos=1, retain=True)

    def status(self, bed: Bed, text: str) -> None:
        bed.client.publish(topics.topic(bed.prefix, topics.STATUS), text, qos=1, retain=True).wait_for_publish(5)

    def score(self, bed: Bed, nips: float, *, ago_s: float = 0.0, confidence: float = 0.8,
              used: tuple[str, ...] = ALL_MODALITIES, calibration: str = "site-cal-3",
              profile: Mapping[str, float] | None = None) -> dict[str, Any]:
        """Publish one score as the daemon does (QoS 1 with the message expiry); returns the message."""
        end = clock.now_ns() - int(ago_s * 1e9)
        when: dict[str, str] = {}
        if end < 2_000_000_000:  # a scene older than this machine's uptime: UTC given, stamps kept >= 0
            utc_end = datetime.now(timezone.utc) - timedelta(seconds=ago_s)
            when = {"window_start_utc": _utc(utc_end - timedelta(seconds=2)), "window_end_utc": _utc(utc_end)}
            end = 2_000_000_000
        weight = round(1.0 / len(used), 4)
        msg = messages.build_score(
            **when,
            device_id=bed.device_id, sequence=bed.sequence, window_start_ns=end - 2_000_000_000, window_end_ns=end,
            nips=nips, confidence=confidence, model_version="fusion-sim",
            calibration_version=calibration, latency_ms={"total": 35.0}, nips_items=items_for(nips, profile),
            modalities={m: {"used": m in used, "weight": weight if m in used else 0.0} for m in ALL_MODALITIES})
        bed.sequence += 1
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = int(self.expiry_s)
        info = bed.client.publish(topics.topic(bed.prefix, topics.SCORE), messages.encode(msg), qos=1,
                                  properties=props)
        with self._lock:
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.failed += 1
            else:
                self.sent.setdefault((bed.site, bed.bed), []).append(msg["message_id"])
        return msg

    def run(self, duration_s: float, cadence_s: float, nips: Callable[[Bed, int], float],
            on_tick: Callable[[float], None] | None = None) -> int:
        """Every bed publishes every ``cadence_s`` for ``duration_s``, the beds spread evenly over each cadence
        (as independent devices are); returns how many scores were published."""
        step = cadence_s / len(self.beds)
        start = time.monotonic()
        k = 0
        while (due := start + k * step) < start + duration_s:
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            bed = self.beds[k % len(self.beds)]
            self.score(bed, nips(bed, k // len(self.beds)))
            k += 1
            if on_tick is not None and k % len(self.beds) == 0:
                on_tick(time.monotonic() - start)
        return k

    def stop(self) -> None:
        for c in self._conns:
            c.disconnect()
            c.loop_stop()


def add_user(state_dir: Path, user: str = USER, password: str = PASSWORD) -> None:
    """``neopain station user add`` with the password on stdin (as an operator's script would)."""
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "station", "user", "add", user, "--state-dir",
                           str(state_dir)], input=password + "\n", capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"station user add failed: {done.stderr.strip()}")


def start_station(workdir: Path, broker_port: int, http_port: int, *args: str,
                  timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
    """``neopain station run`` on ``http_port``; returns once it accepts connections (log: ``workdir/station.log``)."""
    log_path = workdir / "station.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "station", "run", "--port", str(broker_port),
                                 "--state-dir", str(workdir / "state"), "--http-port", str(http_port), *args],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the station exited: {log_path.read_text(errors='replace')}")
        if b"neopain station: http" in log_path.read_bytes():  # then uvicorn binds: wait until it listens
            try:
                with socket.create_connection(("127.0.0.1", http_port), timeout=0.5):
                    return proc
            except OSError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the station did not start within {timeout_s:g} s: {log_path.read_text(errors='replace')}")


def sign_in(driver: Any, url: str, user: str = USER, password: str = PASSWORD) -> None:
    """Sign in through the login page; RuntimeError with the page's own message when it is refused."""
    from selenium.webdriver.common.by import By

    driver.get(url + "/login")
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if driver.current_url.rstrip("/") == url:
            return
        refused = driver.find_elements(By.ID, "login-error")
        if refused:
            raise RuntimeError(f"sign-in failed: {refused[0].text} (at {driver.current_url})")
        time.sleep(0.05)
    raise RuntimeError(f"sign-in failed: still at {driver.current_url} after 20 s")


@dataclass
class Ward:
    """A running desk rig (see :func:`ward`): the broker, the station, a signed-in browser, and beds once made."""

    work: Path
    broker: subprocess.Popen[bytes]
    port: int
    station: subprocess.Popen[bytes]
    url: str
    driver: Any
    beds: SimBeds | None = None


@contextlib.contextmanager
def ward(*station_args: str, prepare: Callable[[Path], list[str]] | None = None,
         window: tuple[int, int] = (1440, 1000)) -> Iterator[Ward]:
    """mosquitto, a user, ``neopain station run`` (``station_args``, plus what ``prepare(workdir)`` returns) and
    a headless Chromium signed in on the board; everything stopped and the work folder removed afterwards."""
    from appliance.devtools import browser as chrome
    from appliance.devtools.demo import _free_port, start_broker

    work = Path(tempfile.mkdtemp(prefix="station-rig-"))
    broker, port = start_broker(work)
    station = driver = None
    rig: Ward | None = None
    try:
        extra = prepare(work) if prepare is not None else []
        add_user(work / "state")
        http = _free_port()
        station = start_station(work, port, http, *station_args, *extra)
        driver = chrome.start_browser(work / "profile", width=window[0], height=window[1])
        rig = Ward(work, broker, port, station, f"http://127.0.0.1:{http}", driver)
        sign_in(driver, rig.url)
        yield rig
    finally:
        if driver is not None:
            driver.quit()
        if rig is not None and rig.beds is not None:
            rig.beds.stop()
        if station is not None:
            station.terminate()
            station.wait(30)
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
