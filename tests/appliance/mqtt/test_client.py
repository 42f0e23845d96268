"""The MQTT network thread never dies silently (appliance/mqtt/client.py, SupervisedClient): a host the resolver
cannot encode and an exception in a callback are logged, counted and retried with backoff, on a real paho
thread and (for the callback) a real mosquitto."""
from __future__ import annotations

import logging
import struct
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from appliance.mqtt.client import SupervisedClient, make_client
from appliance.mqtt.publisher import ConnectionState, Publisher, PublisherConfig

PREFIX = "neopain/test/b1"
SCORE_TOPIC = f"{PREFIX}/score"


def config(tmp_path: Path, port: int, **over: Any) -> PublisherConfig:
    fields: dict[str, Any] = dict(host="127.0.0.1", port=port, site="test", bed="b1", device_id="bed-1",
                                  outbox_path=tmp_path / "outbox.db", reconnect_min_s=1, reconnect_max_s=1,
                                  health_interval_s=60, score_expiry_s=60.0)
    fields.update(over)
    return PublisherConfig(**fields)


def score_fields(i: int) -> dict[str, Any]:
    return dict(window_start_ns=10_000_000_000 + i, window_end_ns=12_000_000_000 + i, nips=1.0, confidence=0.75,
                modalities={"video": {"used": True, "weight": 1.0}}, model_version="fusion-test",
                calibration_version="cal-test", latency_ms={"inference": 5.0})


def scores(sub: Any) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on_topic("/score")]


def test_an_unencodable_host_is_logged_retried_and_said_while_scores_wait(broker, subscriber_factory,
                                                                         tmp_path: Path, caplog) -> None:
    """``broker..local`` (config check refuses it; here the publisher is given it directly) raises UnicodeError
    inside paho's thread: logged, retried with backoff, the reason is the publisher's ``last_error``; scores
    wait in the outbox and go out once the host is right (after a restart)."""
    with caplog.at_level(logging.ERROR):
        pub = Publisher(config(tmp_path, broker.port, host="broker..local", reconnect_min_s=1, reconnect_max_s=1))
        pub.start()
        queued = pub.publish_score(**score_fields(0))["message_id"]
        assert pub.wait_for(lambda p: p.stats().network_errors >= 2, 10), "the loop was not retried"
        thread = pub._client._thread
        assert thread is not None and thread.is_alive(), "paho's network thread died"
        assert pub.state is ConnectionState.FAILED
        assert "UnicodeError" in pub.last_error and "broker..local" in pub.last_error
        pub.stop()
    assert [r for r in caplog.records if "network loop failed (UnicodeError" in r.getMessage()]
    assert not thread.is_alive(), "stop() ends the supervised thread"

    sub = subscriber_factory(broker.port, [SCORE_TOPIC])
    fixed = Publisher(config(tmp_path, broker.port))  # same outbox, right host
    fixed.start()
    assert sub.wait_for(lambda s: [m["message_id"] for m in scores(s)] == [queued], 10)
    fixed.stop()


def _subscribed_client(broker_port: int, client: SupervisedClient, received: list[bytes]) -> None:
    subscribed = threading.Event()
    client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/t", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    assert subscribed.wait(5)
    subscribed.clear()
    client.on_subscribe = lambda *_: subscribed.set()
    client.resubscribed = subscribed  # type: ignore[attr-defined]


def _wait(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


def test_an_exception_in_a_callback_is_logged_and_the_message_handled_once(broker, raw_publish, caplog) -> None:
    received: list[bytes] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        received.append(msg.payload)
        if msg.payload == b"boom":
            raise RuntimeError("handler bug")

    client = make_client(client_id="", logger_name="test.supervised")
    client.on_message = on_message
    with caplog.at_level(logging.ERROR, logger="test.supervised"):
        _subscribed_client(broker.port, client, received)
        try:
            raw_publish(broker.port, f"{PREFIX}/t", b"boom")
            raw_publish(broker.port, f"{PREFIX}/t", b"after")
            assert _wait(lambda: b"after" in received)
            assert received == [b"boom", b"after"], "handled once (acknowledged), and the thread went on"
            assert client.loop_errors == 0 and client.is_connected()
        finally:
            client.disconnect()
            client.loop_stop()
    assert any("Caught exception in on_message: handler bug" in r.getMessage() for r in caplog.records)


class _BadPacketOnce(SupervisedClient):
    """A client whose packet handling fails once outside any callback (a decoding bug, a hostile broker)."""

    failed = False

    def _handle_publish(self) -> Any:
        if not self.failed:
            self.failed = True
            raise struct.error("unpack requires a buffer of 2 bytes")
        return super()._handle_publish()


def test_an_exception_in_the_loop_while_connected_reconnects_after_a_pause(broker, raw_publish, caplog) -> None:
    logger = logging.getLogger("test.supervised")
    client = _BadPacketOnce(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, logger=logger)
    client.suppress_exceptions = True
    client.loop_retry_set(0.2, 0.2)
    errors: list[tuple[str, float]] = []
    client.on_loop_error = lambda exc, delay: errors.append((str(exc), delay))
    received: list[bytes] = []
    client.on_message = lambda c, u, msg: received.append(msg.payload)
    with caplog.at_level(logging.ERROR, logger="test.supervised"):
        _subscribed_client(broker.port, client, received)
        try:
            raw_publish(broker.port, f"{PREFIX}/t", b"first")
            assert client.resubscribed.wait(5), "no clean reconnect after the failure"  # type: ignore[attr-defined]
            raw_publish(broker.port, f"{PREFIX}/t", b"second")
            assert _wait(lambda: b"second" in received)
            assert errors == [("unpack requires a buffer of 2 bytes", 0.2)] and client.loop_errors == 1
        finally:
            client.disconnect()
            client.loop_stop()
    assert any("network loop failed (error: unpack requires" in r.getMessage() for r in caplog.records)
