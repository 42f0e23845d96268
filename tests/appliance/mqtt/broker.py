"""A real mosquitto broker on 127.0.0.1 and a collecting subscriber, with their fixtures.

Why a plain module (not the conftest): the MQTT, station, daemon end-to-end, calibration and reliability tests
all run the broker the same way, so they import it from here (``from tests.appliance.mqtt.broker import
broker_factory``); a conftest or test module imported by name would be a second copy of pytest's own.

The broker runs in the foreground (``mosquitto -c FILE``) on a free port with a temporary config, so tests
exercise real CONNACK/PUBACK/last-will/retain/expiry behaviour. Started as root, mosquitto would drop to user
``mosquitto`` and then fail to read keys or write persistence in our temporary directory; ``user root`` keeps
it as the invoking user instead (ignored when not root).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """One mosquitto process; ``kill()``/``start()`` reuse the same port, config and persistence directory."""

    workdir: Path
    port: int
    extra: list[str]
    persistence: bool = False
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def conf(self) -> Path:
        return self.workdir / "mosquitto.conf"

    def write_conf(self) -> None:
        lines = [f"listener {self.port} 127.0.0.1", *self.extra]
        if not any(line.startswith("allow_anonymous") for line in self.extra):
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            lines.append("user root")
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        lines += ["log_dest stderr", "log_type all"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 5.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.write_conf()
        self.starts += 1
        log = open(self.workdir / f"mosquitto.{self.starts}.log", "wb")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log_text()}")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no final persistence save (only the last autosave survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("mosquitto.*.log")))


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    made: list[Broker] = []

    def make(extra: list[str] | None = None, *, persistence: bool = False, start: bool = True) -> Broker:
        workdir = tmp_path / f"broker{len(made)}"
        workdir.mkdir()
        b = Broker(workdir=workdir, port=free_port(), extra=list(extra or []), persistence=persistence)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.kill()


@pytest.fixture
def unused_port() -> int:
    """A local port nothing listens on (connections are refused): a broker that is down."""
    return free_port()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    expiry_s: int | None = None  # MQTT 5 MessageExpiryInterval as delivered (the broker's remaining time)

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Subscriber:
    """A paho MQTT 5 client that records every message; resubscribes on each connect.

    ``connected`` is set once the SUBACK arrives, so a test never publishes before the subscription exists.
    """

    client: mqtt.Client
    topics: list[str]
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connected: threading.Event = field(default_factory=threading.Event)

    def on_topic(self, suffix: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, predicate: Callable[["Subscriber"], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(port: int, topics: list[str], *, persistent_id: str | None = None,
             auth: tuple[str, str] | None = None) -> Subscriber:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=persistent_id or "",
                             protocol=mqtt.MQTTv5)
        if auth:
            client.username_pw_set(*auth)
        sub = Subscriber(client=client, topics=topics)

        def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
            if rc.is_failure:
                return
            c.subscribe([(t, 1) for t in topics])

        def on_subscribe(*_: Any) -> None:
            sub.connected.set()

        def on_disconnect(*_: Any) -> None:
            sub.connected.clear()

        def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
            with sub.lock:
                expiry = getattr(msg.properties, "MessageExpiryInterval", None)
                sub.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), expiry))

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.reconnect_delay_set(1, 1)
        props = None
        if persistent_id:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        client.connect_async("127.0.0.1", port, keepalive=10, clean_start=persistent_id is None,
                             properties=props)
        client.loop_start()
        made.append(sub)
        if not sub.connected.wait(5):
            raise RuntimeError("test subscriber could not connect and subscribe")
        return sub

    yield make
    for s in made:
        s.close()


def publish_raw(port: int, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
    """One-shot QoS 1 publish from a throwaway client (used to send commands)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@pytest.fixture
def raw_publish() -> Callable[..., None]:
    return publish_raw
