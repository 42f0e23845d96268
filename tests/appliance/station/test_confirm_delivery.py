"""Delivery the station confirms, end to end on a real mosquitto: the device's ``Publisher``, ``neopain watch``
(``run_watch``) and ``neopain bridge`` (``BridgeService``) as they run, no mocks.

- a station that receives everything: the device's health says 0 unconfirmed (and, before any station
  confirmed, that no station confirms instead of "0");
- a station that misses scores: a persistent bridge session is offline while the device publishes, and the
  broker keeps only 10 queued messages for it (``max_queued_messages 10``, the issue's broker); the device's
  health counts exactly the scores the bridge never stored and the log names their sequence range;
- the TLS+password broker's ACL (tests/reliability/secure_broker.py) lets the station write confirmations and
  the bed read its own, and refuses a bed that writes one.
"""
from __future__ import annotations

import argparse
import io
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import jsonschema

from appliance import clock
from appliance.mqtt import messages
from appliance.mqtt.publisher import Publisher
from appliance.station import fhir
from appliance.station.bridge import Bridge, BridgeService
from appliance.station.connection import BrokerOptions
from appliance.station.watch import add_watch_arguments, run_watch
from tests.reliability import secure_broker

HEALTH = jsonschema.Draft202012Validator(messages.HEALTH_SCHEMA)
CONFIRMATION = jsonschema.Draft202012Validator(messages.CONFIRMATION_SCHEMA)
MODS = {"video": {"used": True, "weight": 1.0}}


#: The devices of these tests report health every 0.5 s and reconnect within 1 s (the shared ``device`` fixture,
#: tests/appliance/station/conftest.py, with these fields of PublisherConfig).
FAST = {"health_interval_s": 0.5, "reconnect_min_s": 1, "reconnect_max_s": 1}


def score(pub: Publisher) -> dict[str, Any]:
    end = clock.now_ns()
    return pub.publish_score(window_start_ns=end - 2_000_000_000, window_end_ns=end, nips=3.0, confidence=0.9,
                             modalities=MODS, model_version="m1", calibration_version="c1",
                             latency_ms={"inference": 1.0})


def wait(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def last_health(sub: Any) -> dict[str, Any] | None:
    got = sub.on_topic("/health")
    return got[-1].json() if got else None


def ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


# ---------------------------------------------------------------------------------------------- watch
def test_watch_confirms_everything_and_health_says_zero_unconfirmed(broker: Any, device: Any,
                                                                    subscriber_factory: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="appliance.mqtt.confirmations")
    # Grace well above the watch's confirmation interval (1 s), so a slow CI machine cannot make a false gap.
    pub = device(broker.port, "1", confirm_grace_s=4.0, **FAST)
    sub = subscriber_factory(broker.port, ["neopain/nicu/1/health", "neopain/nicu/1/confirm/+"])
    first = score(pub)  # before any station: nothing can be judged, and health must not say "0 unconfirmed"

    def judged(h: dict[str, Any] | None) -> bool:  # published, and past the grace time
        c = (h or {}).get("confirmations") or {}
        return c.get("highest_published") == first["sequence"] and c.get("awaiting") == 0

    assert wait(lambda: judged(last_health(sub))), last_health(sub)
    before = last_health(sub)["confirmations"]
    assert before["state"] == "none" and before["unconfirmed"] is None, before
    assert "no station confirms deliveries" in caplog.text

    out = io.StringIO()
    p = argparse.ArgumentParser()
    add_watch_arguments(p)
    args = p.parse_args(["--port", str(broker.port), "--once", "3", "--station-id", "watch-test"])
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(run_watch(args, out=out)))
    t.start()
    # mosquitto logs the filter while it handles the SUBSCRIBE, and handles one packet at a time: a score sent
    # after the line appears is routed with the subscription in place.
    assert wait(lambda: "neopain/+/+/score" in broker.log_text()), broker.log_text()[-2000:]
    burst = time.monotonic()
    sent = [score(pub) for _ in range(5)]
    burst_s = time.monotonic() - burst
    t.join(20)
    assert rc == [0], out.getvalue()
    last = sent[-1]["sequence"]

    def settled() -> bool:
        c = pub.confirmations.health()
        return c["awaiting"] == 0 and c["stations"].get("watch-test", {}).get("highest") == last

    assert wait(settled), pub.confirmations.health()
    assert wait(lambda: (last_health(sub) or {}).get("confirmations", {}).get("state") == "confirming")
    health = last_health(sub)
    HEALTH.validate(health)
    c = health["confirmations"]
    assert c["unconfirmed"] == 0 and c["gaps"] == [] and c["highest_published"] == last, c
    confirmations = [m.json() for m in sub.on_topic("/confirm/watch-test")]
    for m in confirmations:
        CONFIRMATION.validate(m)
    assert confirmations[-1]["through"] == last and confirmations[-1]["device_id"] == "dev-1"
    # Five scores in a burst: the first claim at once, then at most one a second, not one per score.
    assert len(confirmations) <= 2 + int(burst_s), (burst_s, confirmations)
    assert "delivery gap" not in caplog.text


# --------------------------------------------------------------------------------------------- bridge
def test_station_that_missed_scores_shows_in_device_health_and_log(broker_factory: Any, device: Any,
                                                                   subscriber_factory: Any, tmp_path: Path,
                                                                   caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="appliance.mqtt.confirmations")
    b = broker_factory(["max_queued_messages 10"])
    pub = device(b.port, "1", confirm_grace_s=2.0, **FAST)
    sub = subscriber_factory(b.port, ["neopain/nicu/1/health"])
    out = tmp_path / "fhir"

    def bridge_up() -> BridgeService:
        service = BridgeService(Bridge(fhir_sink=fhir.FhirFileSink(out)),
                                BrokerOptions(port=b.port, client_id="bridge-persistent"), station_id="bridge-test")
        service.start(5)
        return service

    def station_highest() -> int | None:
        return pub.confirmations.health()["stations"].get("bridge-test", {}).get("highest")

    service = bridge_up()
    sent = [score(pub) for _ in range(3)]
    assert wait(lambda: station_highest() == sent[-1]["sequence"]), pub.confirmations.health()
    service.stop()  # offline, its session kept by the broker: 10 queued messages at most

    sent += [score(pub) for _ in range(33)]
    assert wait(lambda: pub.stats().scores_acked == len(sent)), pub.stats()
    service = bridge_up()
    try:
        sent.append(score(pub))  # a live score after the return: the bridge's claim now spans the gap
        assert wait(lambda: station_highest() == sent[-1]["sequence"]), pub.confirmations.health()
        stored = {p.name[len("Observation-"):-len(".json")] for p in out.glob("Observation-*.json")}
        missed = [m["sequence"] for m in sent if m["message_id"] not in stored]
        assert len(missed) >= 20, (len(missed), b.log_text()[-1500:])  # the broker dropped what it could not queue
        assert wait(lambda: pub.confirmations.health()["unconfirmed"] == len(missed), 10), \
            (missed, pub.confirmations.health())
    finally:
        service.stop()
    c = pub.confirmations.health()
    assert c["state"] == "confirming" and c["gaps"] == ranges(missed) and c["awaiting"] == 0, c
    assert wait(lambda: ((last_health(sub) or {}).get("confirmations") or {}).get("unconfirmed") == len(missed))
    HEALTH.validate(last_health(sub))
    gap_lines = [r.getMessage() for r in caplog.records if "delivery gap" in r.getMessage()]
    named = ", ".join(f"{a}-{z}" if a != z else f"{a}" for a, z in ranges(missed))
    assert any(f"sequence {named}" in ln and f"{len(missed)} score(s)" in ln for ln in gap_lines), \
        (named, gap_lines, caplog.text[-3000:])


# ------------------------------------------------------------------------------------------------ ACL
def test_acl_station_writes_confirmations_beds_only_read_their_own(broker_factory: Any, device: Any,
                                                                   tmp_path: Path, unused_port: int) -> None:
    import paho.mqtt.client as mqtt

    files = secure_broker.make_secure_broker_files(tmp_path / "secure", unused_port)
    b = broker_factory(files.broker_lines())
    site, bed, other = secure_broker.SITE, *secure_broker.BEDS
    pwfile = tmp_path / "bed.pw"
    pwfile.write_text(secure_broker.password(bed) + "\n")
    pub = device(b.port, bed, site=site, confirm_grace_s=1.5, username=bed, password_file=pwfile, **FAST)

    def client(user: str, pw: str) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.username_pw_set(user, pw)
        acks: dict[int, Any] = {}
        c.on_publish = lambda cl, u, mid, rc, props: acks.__setitem__(mid, rc)
        c.user_data_set(acks)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        return c

    def publish(c: mqtt.Client, topic: str, payload: bytes) -> Any:
        info = c.publish(topic, payload, qos=1, retain=True)
        acks = c.user_data_get()
        assert wait(lambda: info.mid in acks, 5)
        return acks[info.mid]

    claim = messages.encode(messages.build_confirmation(device_id=f"dev-{bed}", since=0, highest=0))
    station = client(*secure_broker.STATION)
    intruder = client(bed, secure_broker.password(bed))
    try:
        assert not publish(station, f"neopain/{site}/{bed}/confirm/station-a", claim).is_failure
        refused = {what: publish(intruder, topic, claim) for what, topic in (
            ("own bed", f"neopain/{site}/{bed}/confirm/forged"),
            ("other bed", f"neopain/{site}/{other}/confirm/forged"))}
        assert all(rc.value == 0x87 for rc in refused.values()), refused  # Not authorized
        # The bed (its own user, under the ACL) reads the station's confirmation and nothing forged.
        assert wait(lambda: "station-a" in pub.confirmations.health()["stations"], 5), pub.confirmations.health()
        assert set(pub.confirmations.health()["stations"]) == {"station-a"}
    finally:
        for c in (station, intruder):
            c.disconnect()
            c.loop_stop()
