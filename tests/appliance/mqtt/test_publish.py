"""The publisher against a real mosquitto broker: delivery, availability, outages, restarts, auth, TLS."""
from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from appliance.mqtt import messages
from appliance.mqtt.publisher import ConnectionState, Publisher, PublisherConfig
from tests.appliance.mqtt.pki import make_pki

REPO = Path(__file__).resolve().parents[3]
PROC = Path(__file__).with_name("publisher_proc.py")
PREFIX = "neopain/test/b1"
SCORE_TOPIC = f"{PREFIX}/score"
STATUS_TOPIC = f"{PREFIX}/status"


def config(tmp_path: Path, port: int, **over: Any) -> PublisherConfig:
    fields: dict[str, Any] = dict(host="127.0.0.1", port=port, site="test", bed="b1", device_id="bed-1",
                                  outbox_path=tmp_path / "outbox.db", reconnect_min_s=1, reconnect_max_s=1,
                                  health_interval_s=60, score_expiry_s=60.0, publish_vitals=True)
    fields.update(over)
    return PublisherConfig(**fields)


def score_fields(i: int) -> dict[str, Any]:
    return dict(window_start_ns=10_000_000_000 + i * 2_000_000_000, window_end_ns=12_000_000_000 + i * 2_000_000_000,
                nips=(i % 8) * 0.875, confidence=0.75, modalities={"video": {"used": True, "weight": 0.7},
                                                                    "audio": {"used": True, "weight": 0.3}},
                model_version="fusion-test", calibration_version="cal-test", latency_ms={"inference": 5.0})


def connected(p: Publisher) -> bool:
    return p.state is ConnectionState.CONNECTED


def scores(sub) -> list[dict[str, Any]]:
    return [m.json() for m in sub.on_topic("/score")]


def spawn(port: int, outbox: Path, count: int = 0, interval: float = 0.0) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(PROC), "--port", str(port), "--outbox", str(outbox), "--count", str(count),
         "--interval", str(interval)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def read_until(proc: subprocess.Popen[str], word: str, timeout: float = 10.0) -> list[str]:
    """Lines printed by the child up to and including ``word`` (a reader thread, so a hang cannot block)."""
    lines: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == word:
                done.set()
                return

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), f"child never printed {word!r}; got {lines}"
    return lines


def outbox_depth(path: Path) -> int:
    db = sqlite3.connect(path, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def test_score_status_health_vitals_delivered(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port, [f"{PREFIX}/#"])
    health = {"sources": {"camera": True, "microphone": False}, "fps": {"camera": 14.9},
              "engine_backend": "onnxruntime", "state": "degraded"}
    pub = Publisher(config(tmp_path, broker.port, score_expiry_s=30), health_provider=lambda: health)
    pub.start()
    assert pub.wait_for(connected, 5), pub.last_error
    sent = [pub.publish_score(**score_fields(i)) for i in range(3)]
    pub.publish_vitals(t_mono_ns=time.monotonic_ns(), hr_bpm=151.0, spo2_pct=93.0, source="masimo")
    assert sub.wait_for(lambda s: len(scores(s)) == 3 and s.on_topic("/vitals"), 5)

    got = scores(sub)
    for msg in got:
        jsonschema.validate(msg, messages.SCORE_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert [m["message_id"] for m in got] == [m["message_id"] for m in sent]
    assert [m["sequence"] for m in got] == [0, 1, 2]
    assert all(0 < m.expiry_s <= 30 for m in sub.on_topic("/score"))  # MQTT 5 message expiry travelled
    jsonschema.validate(sub.on_topic("/vitals")[0].json(), messages.VITALS_SCHEMA)
    assert pub.wait_for(lambda p: p.outbox.depth() == 0, 5)  # deleted on PUBACK
    assert pub.stats().scores_acked == 3

    pub.request_health()  # now with outbox depth 0 and a last score
    # Let the broker store that health before the late subscriber arrives: it must get it as the retained one.
    assert sub.wait_for(lambda s: any(m.json()["last_score_age_s"] is not None for m in s.on_topic("/health")), 5)
    late = subscriber_factory(broker.port, [STATUS_TOPIC, f"{PREFIX}/health"])
    # A periodic health published after the subscription arrives live (retain flag 0): look at the retained one.
    assert late.wait_for(lambda s: s.on_topic("/status") and any(m.retain for m in s.on_topic("/health")), 5)
    status = late.on_topic("/status")[0]
    assert status.payload == b"online" and status.retain
    h = [m for m in late.on_topic("/health") if m.retain][-1]
    hj = h.json()
    jsonschema.validate(hj, messages.HEALTH_SCHEMA)
    assert hj["sources"] == health["sources"] and hj["engine_backend"] == "onnxruntime"
    assert hj["last_score_age_s"] is not None

    pub.stop()
    assert sub.wait_for(lambda s: s.on_topic("/status")[-1].payload == b"offline", 5)
    assert pub.state is ConnectionState.STOPPED


def test_last_will_offline_when_process_killed(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port, [STATUS_TOPIC])
    proc = spawn(broker.port, tmp_path / "outbox.db")
    try:
        read_until(proc, "connected")
        assert sub.wait_for(lambda s: [m.payload for m in s.on_topic("/status")] == [b"online"], 5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        assert sub.wait_for(lambda s: s.on_topic("/status")[-1].payload == b"offline", 5)
    finally:
        proc.kill()
        proc.wait(5)
    late = subscriber_factory(broker.port, [STATUS_TOPIC])
    assert late.wait_for(lambda s: s.on_topic("/status"), 5)
    assert late.on_topic("/status")[0].payload == b"offline" and late.on_topic("/status")[0].retain


def test_broker_killed_and_restarted_zero_loss(broker_factory, subscriber_factory, tmp_path: Path) -> None:
    """SIGKILL the broker mid-run and restart it: every score produced arrives at least once; dedup exact."""
    broker = broker_factory(persistence=True)  # keeps the subscriber's session across the restart
    sub = subscriber_factory(broker.port, [SCORE_TOPIC], persistent_id="collector")
    time.sleep(1.3)  # one autosave (1 s) so the persistent subscription survives a SIGKILL
    pub = Publisher(config(tmp_path, broker.port))
    pub.start()
    assert pub.wait_for(connected, 5)

    produced: list[str] = []

    def produce() -> None:
        for i in range(80):
            produced.append(pub.publish_score(**score_fields(i))["message_id"])
            time.sleep(0.025)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.6)
    broker.kill()
    assert pub.wait_for(lambda p: p.state is not ConnectionState.CONNECTED, 5)
    time.sleep(0.6)
    broker.start()
    producer.join(30)

    want = set(produced)
    assert sub.wait_for(lambda s: {m["message_id"] for m in scores(s)} >= want, 20), (
        f"lost {len(want - {m['message_id'] for m in scores(sub)})} of {len(want)}")
    ids = [m["message_id"] for m in scores(sub)]
    assert set(ids) == want and len(want) == 80  # zero lost, nothing foreign
    assert pub.wait_for(lambda p: p.outbox.depth() == 0, 10)
    st = pub.stats()
    assert st.connects >= 2 and st.outbox_dropped_overflow == 0 and st.outbox_dropped_expired == 0
    print(f"broker restart: produced {len(want)}, received {len(ids)} ({len(ids) - len(want)} duplicates)")
    pub.stop()


def test_unacked_rows_delivered_after_publisher_restart(broker, subscriber_factory, unused_port: int,
                                                       tmp_path: Path) -> None:
    """Scores produced while the broker is unreachable survive a SIGKILL of the daemon and go out, in order."""
    outbox = tmp_path / "outbox.db"
    first = spawn(unused_port, outbox, count=5)  # nothing listens there: every row stays un-acked
    try:
        lines = read_until(first, "done")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(5)
    queued = [line.split()[2] for line in lines if line.startswith("queued")]
    assert len(queued) == 5 and outbox_depth(outbox) == 5

    sub = subscriber_factory(broker.port, [SCORE_TOPIC])
    second = spawn(broker.port, outbox, count=0)
    try:
        assert sub.wait_for(lambda s: len(scores(s)) >= 5, 10)
        assert [m["message_id"] for m in scores(sub)] == queued  # all of them, oldest first
        assert [m["sequence"] for m in scores(sub)] == list(range(5))
        deadline = time.monotonic() + 5
        while outbox_depth(outbox) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox_depth(outbox) == 0  # deleted on PUBACK
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(5)


def test_outbox_bound_drops_oldest_and_counts(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port, [SCORE_TOPIC])
    pub = Publisher(config(tmp_path, broker.port, outbox_max_rows=4))
    sent = [pub.publish_score(**score_fields(i)) for i in range(7)]  # before start: waits in the outbox
    assert pub.stats().outbox_dropped_overflow == 3
    pub.start()
    assert sub.wait_for(lambda s: len(scores(s)) >= 4, 5)
    time.sleep(0.3)  # nothing else may follow
    assert [m["sequence"] for m in scores(sub)] == [m["sequence"] for m in sent[3:]]
    pub.stop()


def test_expired_entries_not_delivered(broker, subscriber_factory, tmp_path: Path) -> None:
    sub = subscriber_factory(broker.port, [SCORE_TOPIC])
    pub = Publisher(config(tmp_path, broker.port, score_expiry_s=0.5))
    for i in range(3):
        pub.publish_score(**score_fields(i))
    time.sleep(0.7)
    fresh = [pub.publish_score(**score_fields(i))["message_id"] for i in range(3, 5)]
    pub.start()
    assert sub.wait_for(lambda s: len(scores(s)) >= 2, 5)
    time.sleep(0.3)
    assert [m["message_id"] for m in scores(sub)] == fresh
    assert pub.stats().outbox_dropped_expired == 3
    pub.stop()


def test_password_required_and_wrong_password_refused(broker_factory, subscriber_factory, tmp_path: Path) -> None:
    pwfile = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "bed1", "s3cret"], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "reader", "r3ad"], check=True)
    broker = broker_factory([f"password_file {pwfile}", "allow_anonymous false"])
    sub = subscriber_factory(broker.port, [SCORE_TOPIC], auth=("reader", "r3ad"))
    good, bad = tmp_path / "good.pw", tmp_path / "bad.pw"
    good.write_text("s3cret\n")
    bad.write_text("guess\n")

    refused = Publisher(config(tmp_path, broker.port, username="bed1", password_file=bad,
                               outbox_path=tmp_path / "bad.db", client_id="bad"))
    refused.start()
    assert refused.wait_for(lambda p: p.state is ConnectionState.REFUSED, 5), refused.state
    assert refused.state.is_error and "refused" in (refused.last_error or "")
    anonymous = Publisher(config(tmp_path, broker.port, outbox_path=tmp_path / "anon.db", client_id="anon"))
    anonymous.start()
    assert anonymous.wait_for(lambda p: p.state is ConnectionState.REFUSED, 5), anonymous.state

    pub = Publisher(config(tmp_path, broker.port, username="bed1", password_file=good))
    pub.start()
    assert pub.wait_for(connected, 5), pub.last_error
    pub.publish_score(**score_fields(0))
    assert sub.wait_for(lambda s: len(scores(s)) == 1, 5)
    time.sleep(0.2)
    assert refused.stats().connects == 0 and refused.state is not ConnectionState.CONNECTED
    for p in (pub, refused, anonymous):
        p.stop()

    missing = tmp_path / "missing.pw"
    with pytest.raises(OSError, match="missing.pw"):
        Publisher(config(tmp_path, broker.port, username="bed1", password_file=missing))


def test_commands_parsed_and_bad_ones_counted(broker, subscriber_factory, raw_publish, tmp_path: Path) -> None:
    got: list[messages.Command] = []

    def handler(cmd: messages.Command) -> None:
        if cmd.args.get("explode"):
            raise RuntimeError("handler bug")
        got.append(cmd)

    sub = subscriber_factory(broker.port, [SCORE_TOPIC])
    pub = Publisher(config(tmp_path, broker.port), on_command=handler)
    pub.start()
    assert pub.wait_for(connected, 5)
    time.sleep(0.2)  # SUBACK for cmd/#
    cmd = f"{PREFIX}/cmd"
    raw_publish(broker.port, f"{cmd}/calibration/start", b'{"session": "s1"}')
    raw_publish(broker.port, f"{cmd}/calibration/start", b"{broken json")
    raw_publish(broker.port, f"{cmd}/calibration/stop", b"[1, 2]")
    raw_publish(broker.port, f"{cmd}/self-destruct", b"{}")
    raw_publish(broker.port, f"{cmd}/calibration/stop", b'{"explode": true}')
    assert pub.wait_for(lambda p: sum(vars(p.stats())[k] for k in (
        "commands_ok", "commands_malformed", "commands_unknown")) == 5, 5)
    st = pub.stats()
    assert (st.commands_ok, st.commands_malformed, st.commands_unknown, st.commands_failed) == (2, 2, 1, 1)
    assert [(c.name, c.args) for c in got] == [("calibration/start", {"session": "s1"})]
    pub.publish_score(**score_fields(0))  # still alive and publishing
    assert sub.wait_for(lambda s: len(scores(s)) == 1, 5)
    assert pub.state is ConnectionState.CONNECTED
    pub.stop()


def test_tls_with_client_certificate(broker_factory, subscriber_factory, unused_port: int, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki, "good")
    make_pki(pki, "other")
    tls_port = unused_port
    # The fixture's plain listener is for the test subscriber; the device talks TLS with a client certificate.
    broker = broker_factory([f"listener {tls_port} 127.0.0.1", f"cafile {pki}/good-ca.crt",
                             f"certfile {pki}/good-server.crt", f"keyfile {pki}/good-server.key",
                             "require_certificate true"])
    sub = subscriber_factory(broker.port, [SCORE_TOPIC])
    pub = Publisher(config(tmp_path, tls_port, tls_ca=pki / "good-ca.crt", tls_cert=pki / "good-client.crt",
                           tls_key=pki / "good-client.key"))
    pub.start()
    assert pub.wait_for(connected, 5), pub.last_error
    pub.publish_score(**score_fields(0))
    assert sub.wait_for(lambda s: len(scores(s)) == 1, 5)

    # A broker certificate from a CA we do not trust: an error state naming the cause, never "connected".
    wrong = Publisher(config(tmp_path, tls_port, tls_ca=pki / "other-ca.crt", tls_cert=pki / "good-client.crt",
                             tls_key=pki / "good-client.key", outbox_path=tmp_path / "wrong.db", client_id="wrong"))
    wrong.start()
    assert wrong.wait_for(lambda p: p.state is ConnectionState.FAILED, 5), wrong.state
    assert "certificate verify failed" in (wrong.last_error or "")
    time.sleep(0.2)
    assert wrong.stats().connects == 0
    for p in (pub, wrong):
        p.stop()


@pytest.mark.parametrize(
    "over, field",
    [
        ({"site": "a/b"}, "mqtt.site"),
        ({"bed": "#"}, "mqtt.bed"),
        ({"keepalive_s": 30, "host": ""}, "mqtt.host"),
        ({"score_expiry_s": 0}, "mqtt.score_expiry_s"),
        ({"password_file": Path("/x")}, "mqtt.password_file"),
        ({"tls_cert": Path("/c.crt")}, "mqtt.tls_cert"),
        ({"inflight_window": 0}, "mqtt.inflight_window"),
        ({"qos": 0}, "mqtt.qos"),
    ],
)
def test_config_refuses_bad_fields(tmp_path: Path, over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        config(tmp_path, 1883, **over)


def test_refused_score_is_not_queued(tmp_path: Path) -> None:
    pub = Publisher(config(tmp_path, 1883))
    with pytest.raises(ValueError, match="^nips:"):
        pub.publish_score(**{**score_fields(0), "nips": 9})
    first = pub.publish_score(**score_fields(1))
    assert pub.outbox.depth() == 1 and first["sequence"] == 0
    pub.stop()


def test_qos_2_scores_arrive_as_qos_2_and_leave_the_outbox_on_pubcomp(broker, tmp_path: Path) -> None:
    """``[mqtt] qos = 2``: a QoS 2 subscriber gets every score at QoS 2 (the broker delivers min(publish,
    subscribe) QoS, so 2 proves the device published at 2); the outbox row goes only after PUBCOMP."""
    import paho.mqtt.client as mqtt

    got: list[tuple[str, int]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    sub.on_connect = lambda c, *_: c.subscribe(SCORE_TOPIC, qos=2)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda c, u, msg: got.append((json.loads(msg.payload)["message_id"], msg.qos))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    try:
        assert subscribed.wait(5)
        pub = Publisher(config(tmp_path, broker.port, qos=2))
        pub.start()
        assert pub.wait_for(connected, 5), pub.last_error
        sent = [pub.publish_score(**score_fields(i))["message_id"] for i in range(5)]
        assert pub.wait_for(lambda p: p.stats().scores_acked == 5, 10)
        assert pub.outbox.depth() == 0, "released on PUBCOMP"
        deadline = time.monotonic() + 5
        while len(got) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [m for m, _ in got] == sent, "nothing lost, in order, once each"
        assert {q for _, q in got} == {2}
        pub.stop()
    finally:
        sub.disconnect()
        sub.loop_stop()


def test_a_60kB_command_topic_gives_a_bounded_log_line(broker, raw_publish, tmp_path: Path, caplog) -> None:
    pub = Publisher(config(tmp_path, broker.port))
    pub.start()
    assert pub.wait_for(connected, 5)
    with caplog.at_level(logging.WARNING, logger="appliance.mqtt.publisher"):
        raw_publish(broker.port, f"{PREFIX}/cmd/" + "x" * 60000, b"{}")
        assert pub.wait_for(lambda p: p.stats().commands_unknown == 1, 5)
    pub.stop()
    (line,) = [r.getMessage() for r in caplog.records if "ignored command" in r.getMessage()]
    assert len(line) < 700 and "(60000 chars)" in line and f"({len(PREFIX) + 5 + 60000} chars)" in line
