"""Fixtures for the central-station tests: the real mosquitto broker of the MQTT tests, a local MLLP receiver
and a local FHIR server (``http.server``), all on 127.0.0.1.

The broker fixtures are imported from ``tests/appliance/mqtt/broker.py`` so both suites run the broker the same
way.
"""
from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from appliance.station import hl7
from tests.appliance.mqtt.broker import broker, broker_factory, raw_publish, subscriber_factory, unused_port

# The MQTT tests' broker fixtures, re-exported (pytest finds a conftest's fixtures by attribute name); this
# module's own fixtures follow.
__all__ = ["broker", "broker_factory", "raw_publish", "subscriber_factory", "unused_port"]


@dataclass
class MllpServer:
    """A threaded MLLP receiver that ACKs (or NAKs) every message and records what it got."""

    port: int
    received: list[str] = field(default_factory=list)
    nak_codes: list[str] = field(default_factory=list)  # answer codes to use first, then AA
    drop_first: int = 0  # close the connection without ACK for the first N messages
    lock: threading.Lock = field(default_factory=threading.Lock)
    sock: socket.socket | None = None

    def serve(self) -> None:
        assert self.sock is not None
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        dec = hl7.MllpDecoder()
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for msg in dec.feed(data):
                    with self.lock:
                        if self.drop_first > 0:
                            self.drop_first -= 1
                            return
                        code = self.nak_codes.pop(0) if self.nak_codes else "AA"
                        if code == "AA":
                            self.received.append(msg)
                    conn.sendall(hl7.mllp_frame(hl7.build_ack(msg, code, "test | reason" if code != "AA" else "")))

    def messages(self) -> list[str]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def mllp_server() -> Iterator[MllpServer]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    server = MllpServer(port=sock.getsockname()[1], sock=sock)
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    yield server
    sock.close()


@dataclass
class FhirServer:
    """Minimal FHIR endpoint: honours ``If-None-Exist`` on POST /fhir/Observation like a real server."""

    url: str
    posts: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_next: list[int] = field(default_factory=list)  # HTTP codes to answer first
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def fhir_server() -> Iterator[FhirServer]:
    state = FhirServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                if self.path != "/fhir/Observation":
                    code = 404
                elif state.fail_next:
                    code = state.fail_next.pop(0)
                else:
                    resource = json.loads(body)
                    state.posts.append(resource)
                    state.headers.append(dict(self.headers))
                    key = self.headers.get("If-None-Exist", "")
                    code = 200 if key and key in state.stored else 201
                    state.stored.setdefault(key, resource)
            self.send_response(code)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield state
    server.shutdown()
    server.server_close()


def _make_score(*, nips: float = 3.5, items: dict[str, float] | None = None, device_id: str = "dev-1",
                end_ago_s: float = 0.0, **kw: Any) -> dict[str, Any]:
    """A real score message from the device's own builder (so schema drift shows up here too)."""
    from appliance import clock
    from appliance.mqtt import messages

    end = clock.now_ns() - int(end_ago_s * 1e9)
    fields: dict[str, Any] = dict(
        device_id=device_id, sequence=1, window_start_ns=end - 2_000_000_000, window_end_ns=end, nips=nips,
        confidence=0.8, model_version="fusion-1.0", calibration_version="cal-7",
        modalities={"video": {"used": True, "weight": 0.6}, "audio": {"used": True, "weight": 0.4},
                    "vitals": {"used": False, "weight": 0.0}},
        latency_ms={"inference": 3.0}, nips_items=items)
    fields.update(kw)
    return messages.build_score(**fields)


@pytest.fixture
def make_score() -> Any:
    return _make_score


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Any]:
    """Real appliance publishers (outbox, LWT, status, health) for simulated beds: ``device(port, bed, site=...,
    health=..., **config)``; ``health`` adds fields to each health message (``state``, ``detail``), ``config``
    overrides ``PublisherConfig`` fields (e.g. ``confirm_grace_s``, ``health_interval_s``, credentials)."""
    from appliance.mqtt.publisher import ConnectionState, Publisher, PublisherConfig

    made: list[Publisher] = []

    def make(port: int, bed: str, site: str = "nicu", *, health: dict[str, Any] | None = None,
             **config: Any) -> Publisher:
        fields: dict[str, Any] = dict(host="127.0.0.1", port=port, site=site, bed=bed, device_id=f"dev-{bed}",
                                      outbox_path=tmp_path / f"outbox-{site}-{bed}.db", health_interval_s=60,
                                      score_expiry_s=120.0)
        cfg = PublisherConfig(**{**fields, **config})
        pub = Publisher(cfg, health_provider=lambda: {"sources": {"camera": True, "monitor": True}, **(health or {})})
        pub.start()
        assert pub.wait_for(lambda p: p.state is ConnectionState.CONNECTED, 5), pub.last_error
        made.append(pub)
        return pub

    yield make
    for p in made:
        if p._client is not None:  # noqa: SLF001 - stop only those the test did not stop itself
            p.stop()


#: What the simulated beds' scores say they used: video and vitals, no audio (watch shows "V.H").
SCORE_MODALITIES = {"video": {"used": True, "weight": 0.7}, "audio": {"used": False, "weight": 0.0},
                    "vitals": {"used": True, "weight": 0.3}}


@pytest.fixture
def send_score() -> Any:
    """``send_score(publisher, nips, ended_ago_s=0)``: one score through a real publisher (outbox, QoS 1) with a
    2-s window ending ``ended_ago_s`` ago; returns the message."""
    from appliance import clock

    def send(pub: Any, nips: float, *, ended_ago_s: float = 0.0) -> dict[str, Any]:
        end = clock.now_ns() - int(ended_ago_s * 1e9)
        return pub.publish_score(window_start_ns=end - 2_000_000_000, window_end_ns=end, nips=nips, confidence=0.9,
                                 modalities=SCORE_MODALITIES, model_version="fusion-1.0", calibration_version="cal-1",
                                 latency_ms={"inference": 2.0}, nips_items={"cry": 1})

    return send


@pytest.fixture
def wait() -> Any:
    """``wait(pred, timeout=10)``: poll ``pred`` every 20 ms until it is true (True) or the time is up (its last
    answer). For conditions other threads or processes make true; never a sleep standing in for one."""
    import time

    def until(pred: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.02)
        return bool(pred())

    return until
