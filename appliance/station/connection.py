"""The one place the central station opens the ward broker: its command-line options and its subscriber.

Watch and bridge subscribe to ``neopain/<site>/<bed>/{score,status,health}`` (``appliance.mqtt.topics``) and
never talk to a bedside device directly. ``StationConnection`` connects in the background, subscribes on
every connect and turns a refusal (credentials, TLS, subscription) into an error the commands print as one
line; the client itself comes from ``appliance.mqtt.client`` like the device's, so auth and TLS rules match.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance.mqtt.client import make_client, read_password

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BrokerOptions:
    """How to reach the ward broker; secrets are files (same rules as the device's ``[mqtt]`` table)."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_id: str | None = None
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("--host: must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port: {self.port} is not a TCP port")
        if self.password_file is not None and not self.username:
            raise ValueError("--password-file: given without --username")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert/--tls-key: give both or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("--tls-cert: a client certificate needs --tls-ca")
        for name in ("tls_ca", "tls_cert", "tls_key"):
            p = getattr(self, name)
            if p is not None and not Path(p).is_file():
                raise ValueError(f"--{name.replace('_', '-')} {p}: no such file")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BrokerOptions":
        def path(v: str | None) -> Path | None:
            return None if v is None else Path(v)

        return cls(host=args.host, port=args.port, username=args.username, password_file=path(args.password_file),
                   tls_ca=path(args.tls_ca), tls_cert=path(args.tls_cert), tls_key=path(args.tls_key),
                   client_id=getattr(args, "client_id", None))


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """The broker group shared by ``neopain watch`` and ``neopain bridge`` (read back by ``from_args``)."""
    g = parser.add_argument_group("broker")
    g.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=1883, help="MQTT broker port (default: 1883)")
    g.add_argument("--site", help="only this site (default: every site on the broker)")
    g.add_argument("--username", help="MQTT user name")
    g.add_argument("--password-file", help="file whose first line is the MQTT password")
    g.add_argument("--tls-ca", help="CA certificate (PEM): enables TLS")
    g.add_argument("--tls-cert", help="client certificate (PEM), with --tls-key")
    g.add_argument("--tls-key", help="client key (PEM), with --tls-cert")


MessageHandler = Callable[[mqtt.MQTTMessage, int], None]


class StationConnection:
    """A subscriber client: connects in the background, subscribes on every connect, reports refusals.

    ``on_message(msg, generation)`` runs on paho's thread; ``generation`` counts connections so a manual ack
    for a message from an earlier connection is never sent on a later one (the broker redelivers it instead).
    With ``persistent_session_s`` > 0 and a client id, the broker keeps the subscription and queues QoS 1
    messages while this client is away. ``on_ready()`` runs (on paho's thread) each time the subscription is
    in place, e.g. to re-send the station's confirmations after a reconnect.
    """

    def __init__(self, options: BrokerOptions, topics: list[str], on_message: MessageHandler, *,
                 manual_ack: bool = False, persistent_session_s: int = 0,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.options = options
        self._on_ready = on_ready
        self._refusal_logged = False
        self.topics = topics
        self._on_message = on_message
        self._persistent = persistent_session_s if options.client_id else 0
        self._password = read_password(options.password_file) if options.password_file else None
        self.connected = threading.Event()
        self.error: str | None = None
        self._failed = threading.Event()
        self.generation = 0
        client = make_client(client_id=options.client_id or "", logger_name=__name__ + ".paho",
                             username=options.username, password=self._password, tls_ca=options.tls_ca,
                             tls_cert=options.tls_cert, tls_key=options.tls_key, manual_ack=manual_ack)
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._connected
        client.on_connect_fail = self._connect_failed
        client.on_disconnect = self._disconnected
        client.on_subscribe = self._subscribed
        client.on_publish = self._published
        client.on_message = lambda c, u, msg: self._on_message(msg, self.generation)
        self.client = client

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self.error = f"broker {self.options.host}:{self.options.port} refused the connection: {rc}"
            self._failed.set()
            return
        self.generation += 1
        self.error = None
        client.subscribe([(t, 1) for t in self.topics])

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[Any], props: Any) -> None:
        bad = [str(rc) for rc in rcs if rc.is_failure]
        if bad:
            self.error = f"broker refused the subscription: {', '.join(bad)}"
            self._failed.set()
            return
        self.connected.set()
        if self._on_ready is not None:
            self._on_ready()

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        if rc.is_failure and not self._refusal_logged:  # once: an ACL refusal would repeat for every bed
            self._refusal_logged = True
            log.warning("station: the broker refused a publish (%s); the station's user needs write access to "
                        "neopain/+/+/confirm/<station-id> to confirm deliveries", rc)

    def publish_retained(self, topic: str, payload: bytes) -> bool:
        """A QoS 1 retained publish, only while connected and subscribed (False: not sent, the caller keeps it
        due), so nothing stale is queued in paho while the broker is away."""
        if not self.connected.is_set():
            return False
        return self.client.publish(topic, payload, qos=1, retain=True).rc == mqtt.MQTT_ERR_SUCCESS

    def _connect_failed(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` block, so the cause (refused, TLS) is the one handled.
        exc = sys.exc_info()[1]
        cause = f": {type(exc).__name__}: {exc}" if exc else ""
        self.error = f"cannot connect to broker {self.options.host}:{self.options.port}{cause}"
        self._failed.set()

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connected.clear()
        if rc.is_failure and self.error is None:
            self.error = f"disconnected from broker: {rc}"

    def start(self) -> None:
        props = None
        if self._persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._persistent
        self.client.connect_async(self.options.host, self.options.port, keepalive=self.options.keepalive_s,
                                  clean_start=not self._persistent, properties=props)
        self.client.loop_start()

    def wait_ready(self, timeout_s: float) -> None:
        """Block until subscribed; raise ConnectionError with the reason on refusal, failure or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected.is_set():
                return
            if self._failed.wait(0.05):
                raise ConnectionError(self.error or "broker connection failed")
        raise ConnectionError(self.error or f"no connection to {self.options.host}:{self.options.port} "
                                            f"within {timeout_s:g}s")

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge a message received on connection ``generation``; False (not sent) if that one is gone."""
        if generation != self.generation or not self.connected.is_set():
            return False
        return self.client.ack(mid, qos) == mqtt.MQTT_ERR_SUCCESS

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
