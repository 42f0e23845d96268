"""Delivery confirmation, device side: the confirmation message and its schema, and the tracker that turns
stations' confirmations into health figures and journal lines (a fake clock; the broker runs in
tests/appliance/station/test_confirm_delivery.py)."""
from __future__ import annotations

import json
import logging
from typing import Any

import jsonschema
import pytest

from appliance.mqtt import messages, topics
from appliance.mqtt.confirmations import ConfirmationTracker, RangeSet

VALIDATOR = jsonschema.Draft202012Validator
PREFIX = topics.bed_prefix("nicu", "7")
DEVICE = "dev-7"


def confirm_payload(since: int, highest: int, missing: list[tuple[int, int]] = (), device: str = DEVICE) -> bytes:
    return messages.encode(messages.build_confirmation(device_id=device, since=since, highest=highest,
                                                       missing=missing))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def tracker() -> tuple[ConfirmationTracker, Clock]:
    clock = Clock()
    return ConfirmationTracker(device_id=DEVICE, prefix=PREFIX, grace_s=5.0, clock=clock), clock


def publish(t: ConfirmationTracker, *seqs: int) -> None:
    """As the publisher does: the row goes to paho, then the broker's PUBACK arrives."""
    for seq in seqs:
        t.sending(10_000 + seq, json.dumps({"sequence": seq}).encode())
        t.acked_row(10_000 + seq)


def station(t: ConfirmationTracker, name: str, payload: bytes) -> None:
    t.receive(topics.confirm_topic(PREFIX, name), payload)


# ------------------------------------------------------------------------------------------- the message
def test_confirmation_is_schema_valid_and_round_trips() -> None:
    VALIDATOR.check_schema(messages.CONFIRMATION_SCHEMA)
    msg = messages.build_confirmation(device_id=DEVICE, since=3, highest=40, missing=[(5, 7), (10, 10)])
    VALIDATOR(messages.CONFIRMATION_SCHEMA).validate(msg)
    assert msg["through"] == 4  # derived: the highest contiguous stored sequence
    claim = messages.parse_confirmation(messages.encode(msg))
    assert claim.covered() == [(3, 4), (8, 9), (11, 40)]
    assert [s for s in range(0, 42) if claim.covers(s)] == [3, 4, 8, 9, *range(11, 41)]
    whole = messages.build_confirmation(device_id=DEVICE, since=0, highest=9)
    assert whole["through"] == 9 and whole["missing"] == []
    VALIDATOR(messages.CONFIRMATION_SCHEMA).validate(whole)


def _body(**over: Any) -> bytes:
    body = messages.build_confirmation(device_id=DEVICE, since=3, highest=40, missing=[(5, 7)])
    body.update(over)
    return json.dumps(body).encode()


@pytest.mark.parametrize("payload, field", [
    (b"\xff{}", "not UTF-8 JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"[" * 3000, "not UTF-8 JSON"),
    (b'{"since": NaN}', "not UTF-8 JSON"),
    (b" " * 5000, "exceeds 4096"),
    (_body(schema_version=2), "schema_version"),
    (_body(type="score"), "confirmation.type"),
    (_body(device_id=""), "confirmation.device_id"),
    (_body(since=-1), "confirmation.since"),
    (_body(since=True), "confirmation.since"),
    (_body(highest="40"), "confirmation.highest"),
    (_body(highest=2), "confirmation.highest"),
    (_body(through=40), "confirmation.through"),
    (_body(missing=[[3, 4]]), "confirmation.missing[0]"),  # since itself is stored
    (_body(missing=[[38, 40]]), "confirmation.missing[0]"),  # highest itself is stored
    (_body(missing=[[9, 10], [5, 7]], through=8), "confirmation.missing[1]"),  # not ascending
    (_body(missing=[[5]]), "confirmation.missing[0]"),
    (_body(missing="5-7"), "confirmation.missing"),
    (_body(missing=[[2 * i + 4, 2 * i + 4] for i in range(33)], highest=100, through=3), "at most 32"),
])
def test_bad_confirmations_are_refused_naming_the_field(payload: bytes, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        messages.parse_confirmation(payload)


def test_health_block_is_schema_valid_and_never_says_zero_when_no_station_confirms() -> None:
    none = {"state": "none", "grace_s": 30.0, "unconfirmed": None, "awaiting": 2, "gaps": [],
            "highest_published": 4, "stations": {}, "invalid": 0}
    health = messages.build_health(device_id=DEVICE, sources={"camera": True}, confirmations=none)
    VALIDATOR(messages.HEALTH_SCHEMA).validate(health)
    with pytest.raises(ValueError, match="confirmations.unconfirmed"):
        messages.build_health(device_id=DEVICE, sources={}, confirmations={**none, "unconfirmed": 0})
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR(messages.HEALTH_SCHEMA).validate({**health, "confirmations": {**none, "unconfirmed": 0}})
    with pytest.raises(ValueError, match="confirmations.stations.st1.age_s"):
        messages.build_health(device_id=DEVICE, sources={}, confirmations={
            **none, "state": "confirming", "unconfirmed": 0,
            "stations": {"st1": {"through": 1, "highest": 1, "age_s": -1}}})


# ------------------------------------------------------------------------------------------- the tracker
def test_range_set() -> None:
    r = RangeSet()
    for s in (1, 2, 3, 7, 5, 6, 9):
        assert r.add(s)
    assert not r.add(2)
    assert r.ranges == [(1, 3), (5, 7), (9, 9)] and r.count == 7
    assert r.remove_range(2, 5) == [(2, 3), (5, 5)]
    assert r.ranges == [(1, 1), (6, 7), (9, 9)] and r.count == 4
    assert r.add(8) and r.ranges == [(1, 1), (6, 9)]
    assert r.intersect(0, 7) == [(1, 1), (6, 7)]
    assert r.pop_oldest() == 1 and r.count == 4


def test_no_station_says_so_and_counts_nothing(tracker, caplog) -> None:
    t, clock = tracker
    publish(t, 0, 1, 2)
    h = t.health()
    assert h["state"] == "none" and h["unconfirmed"] is None and h["awaiting"] == 3
    clock.t += 6
    with caplog.at_level(logging.WARNING):
        h = t.health()
        publish(t, 3)
        clock.t += 6
        t.health()
    assert h["state"] == "none" and h["unconfirmed"] is None and h["awaiting"] == 0
    said = [r.getMessage() for r in caplog.records if "no station confirms" in r.getMessage()]
    assert len(said) == 1 and "neopain/nicu/7/confirm/+" in said[0]  # once, not per score


def test_everything_confirmed_is_zero_unconfirmed(tracker, caplog) -> None:
    t, clock = tracker
    station(t, "watch-a", confirm_payload(0, 0))
    publish(t, 1, 2, 3)
    station(t, "watch-a", confirm_payload(0, 3))
    clock.t += 10
    with caplog.at_level(logging.WARNING):
        h = t.health()
    assert h["state"] == "confirming" and h["unconfirmed"] == 0 and h["awaiting"] == 0 and h["gaps"] == []
    assert h["stations"] == {"watch-a": {"through": 3, "highest": 3, "age_s": 10.0}}
    assert not [r for r in caplog.records if "delivery gap" in r.getMessage()]
    VALIDATOR(messages.HEALTH_SCHEMA).validate(messages.build_health(device_id=DEVICE, sources={}, confirmations=h))


def test_a_confirmation_ahead_of_the_pubacks_still_counts(tracker) -> None:
    """The station may confirm before the device's pump has handled the PUBACK: the stored claim applies."""
    t, clock = tracker
    station(t, "st", confirm_payload(0, 5))
    publish(t, 4, 5)
    clock.t += 10
    assert t.health()["unconfirmed"] == 0


def test_gap_is_counted_and_named_once_then_confirmed_late(tracker, caplog) -> None:
    t, clock = tracker
    station(t, "bridge-1", confirm_payload(0, 2))
    publish(t, *range(3, 36))  # 33 scores while the station is away
    clock.t += 1
    station(t, "bridge-1", confirm_payload(3, 12))  # its queue held 10 of them
    publish(t, 36)
    station(t, "bridge-1", confirm_payload(3, 36, [(13, 35)]))
    with caplog.at_level(logging.INFO):
        clock.t += 5
        h = t.health()
        clock.t += 5
        t.health()
    assert h["unconfirmed"] == 23 and h["gaps"] == [[13, 35]] and h["awaiting"] == 0
    gaps = [r.getMessage() for r in caplog.records if "delivery gap" in r.getMessage()]
    assert len(gaps) == 1 and "23 score(s)" in gaps[0] and "sequence 13-35" in gaps[0], gaps
    # Another station that did get them (a persistent session with a larger queue) confirms them late.
    with caplog.at_level(logging.INFO):
        station(t, "bridge-2", confirm_payload(10, 36))
    h = t.health()
    assert h["unconfirmed"] == 0 and h["gaps"] == [] and set(h["stations"]) == {"bridge-1", "bridge-2"}
    assert any("confirmed 23 score(s) late: sequence 13-35" in r.getMessage() for r in caplog.records)


def test_an_open_gap_is_journalled_at_a_bounded_rate(caplog) -> None:
    clock = Clock()
    t = ConfirmationTracker(device_id=DEVICE, prefix=PREFIX, grace_s=5.0, clock=clock, log_every_s=60.0)
    station(t, "dead", confirm_payload(0, 0))  # a station that stopped: its retained claim stays
    with caplog.at_level(logging.WARNING):
        for seq in range(1, 301):  # five minutes at one score a second
            publish(t, seq)
            clock.t += 1
    gaps = [r.getMessage() for r in caplog.records if "delivery gap" in r.getMessage()]
    assert 3 <= len(gaps) <= 6, gaps  # about once a minute, not once per score
    assert t.health()["unconfirmed"] == 296


def test_bad_confirmations_are_counted_never_raised(tracker, caplog) -> None:
    t, clock = tracker
    long_station = "s" * 60_000
    with caplog.at_level(logging.WARNING):
        station(t, "st", b"{not json")
        station(t, "st", b"x" * 100_000)
        station(t, "st", _body(through=1))
        t.receive(f"{PREFIX}/confirm/{long_station}", confirm_payload(0, 1))
        t.receive(f"{PREFIX}/confirm/a/b", confirm_payload(0, 1))
    h = t.health()
    assert h["invalid"] == 5 and h["state"] == "none"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 and max(len(ln) for ln in lines) < 700, [len(ln) for ln in lines]
    assert any("60... (" in ln or "chars)" in ln for ln in lines)


def test_other_device_and_retired_station_and_earlier_counter(tracker) -> None:
    t, clock = tracker
    station(t, "st", confirm_payload(0, 50, device="old-device"))  # the bed's previous device
    assert t.health()["state"] == "none"
    station(t, "st", confirm_payload(0, 5000))  # retained from before this device's outbox started afresh
    publish(t, 0, 1, 2)
    clock.t += 10
    h = t.health()
    assert h["state"] == "confirming" and h["unconfirmed"] == 3, h  # the old claim confirms nothing new
    station(t, "st", confirm_payload(0, 2))
    assert t.health()["unconfirmed"] == 0
    station(t, "st", b"")  # the station's retained confirmation was cleared: it is retired
    h = t.health()
    assert h["state"] == "none" and h["unconfirmed"] is None and h["stations"] == {}


def test_schema_doc_names_the_topic_and_every_field() -> None:
    """docs/mqtt.md is the contract for station writers: it must not drift from the schemas."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "mqtt.md").read_text(encoding="utf-8")
    assert "neopain/<site>/<bed>/confirm/<station-id>" in doc
    assert topics.confirm_topic(topics.bed_prefix("<site>", "<bed>"), "<station-id>") in doc
    for schema in (messages.CONFIRMATION_SCHEMA, messages.CONFIRMATIONS_HEALTH_SCHEMA):
        for name in schema["properties"]:
            assert f"| `{name}` |" in doc or name in ("schema_version", "type"), name
