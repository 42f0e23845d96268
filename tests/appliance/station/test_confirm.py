"""Delivery confirmation, station side: the ledger of stored sequences and the rate-limited ``Confirmer``
(a fake clock and a recording transport; the broker runs in test_confirm_delivery.py)."""
from __future__ import annotations

import argparse
import json
from typing import Any

import jsonschema
import pytest

from appliance.mqtt import messages
from appliance.station.confirm import Confirmer, SequenceLedger, add_confirm_arguments, station_id_from_args

VALIDATOR = jsonschema.Draft202012Validator(messages.CONFIRMATION_SCHEMA)


def test_ledger_advances_records_gaps_and_fills_them() -> None:
    led = SequenceLedger.first("dev", 10)
    assert led.store(11) == "advanced"
    assert led.store(15) == "advanced" and led.missing == [(12, 14)]
    assert led.store(11, new=False) == "held"
    assert led.store(13) == "partial" and led.missing == [(12, 12), (14, 14)]
    assert led.store(12) == "filled" and led.missing == [(14, 14)]
    assert led.store(8) == "advanced" and (led.since, led.missing) == (8, [(9, 9), (14, 14)])  # a late replay
    msg = led.message()
    VALIDATOR.validate(msg)
    assert (msg["since"], msg["through"], msg["highest"], msg["missing"]) == (8, 8, 15, [[9, 9], [14, 14]])


def test_ledger_sees_a_counter_that_started_again() -> None:
    led = SequenceLedger.first("dev", 500)
    led.store(501)
    assert led.store(0) == "advanced"  # a replay of old rows looks like this too: claim extends downwards
    assert led.store(1) == "partial"
    assert led.store(1) == "reset"  # a *new* message with a sequence already held: the counter restarted
    assert (led.since, led.highest, led.missing) == (1, 1, [])
    far = SequenceLedger.first("dev", 300_000)
    assert far.store(3) == "reset" and far.since == 3


def test_ledger_forgets_its_oldest_gaps_beyond_the_bound() -> None:
    led = SequenceLedger.first("dev", 0)
    for seq in range(2, 2 * 40, 2):  # every other sequence missing: 39 gaps
        led.store(seq)
    assert len(led.missing) == messages.MAX_MISSING_RANGES
    assert led.since == led.missing[0][0] - 1  # claims less, never more
    VALIDATOR.validate(led.message())


class Transport:
    def __init__(self, ok: bool = True) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.ok = ok

    def __call__(self, topic: str, payload: bytes) -> bool:
        if self.ok:
            self.sent.append((topic, json.loads(payload)))
        return self.ok


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_confirmer_is_rate_limited_per_bed_and_immediate_when_a_gap_closes() -> None:
    out, clock = Transport(), Clock()
    c = Confirmer("watch-a", out, min_interval_s=1.0, clock=clock)
    c.stored("nicu", "1", "dev-1", 0)
    c.stored("nicu", "2", "dev-2", 7)
    assert c.flush() is None
    assert [t for t, _ in out.sent] == ["neopain/nicu/1/confirm/watch-a", "neopain/nicu/2/confirm/watch-a"]
    for seq in (1, 2, 4, 5):  # a burst: no message per score
        c.stored("nicu", "1", "dev-1", seq)
    clock.t += 0.3
    assert c.flush() == pytest.approx(0.7)
    assert len(out.sent) == 2
    clock.t += 0.7
    c.flush()
    assert out.sent[-1][1]["highest"] == 5 and out.sent[-1][1]["missing"] == [[3, 3]]
    c.stored("nicu", "1", "dev-1", 3)  # the gap closes: sent at once, interval or not
    clock.t += 0.1
    c.flush()
    assert out.sent[-1][1]["missing"] == [] and out.sent[-1][1]["through"] == 5 and len(out.sent) == 4
    c.stored("nicu", "1", "dev-1", 3, new=False)  # nothing new: nothing sent
    clock.t += 5
    assert c.flush() is None and len(out.sent) == 4
    for _, msg in out.sent:
        VALIDATOR.validate(msg)


def test_confirmer_keeps_what_it_could_not_send_and_resends_after_reconnect() -> None:
    out, clock = Transport(ok=False), Clock()
    c = Confirmer("bridge-a", out, clock=clock)
    c.stored("nicu", "1", "dev-1", 0)
    assert c.flush() == 1.0 and c.failed == 1 and out.sent == []
    out.ok = True
    clock.t += 1
    c.flush()
    assert len(out.sent) == 1
    c.resend_all()  # a reconnect: the retained claim is sent again at once
    c.flush()
    assert len(out.sent) == 2 and c.sent == 2


def test_a_new_device_on_a_bed_starts_a_new_claim() -> None:
    out = Transport()
    c = Confirmer("watch-a", out)
    c.stored("nicu", "1", "dev-1", 400)
    c.stored("nicu", "1", "dev-9", 0)
    c.flush()
    assert out.sent[-1][1]["device_id"] == "dev-9" and out.sent[-1][1]["since"] == 0


def test_station_id_options() -> None:
    p = argparse.ArgumentParser()
    add_confirm_arguments(p, "bridge")
    assert station_id_from_args(p.parse_args(["--station-id", "st-1"]), "bridge", "cid") == "st-1"
    assert station_id_from_args(p.parse_args([]), "bridge", "bridge/east") == "bridge-bridgeeast"
    assert station_id_from_args(p.parse_args([]), "watch").startswith("watch-")
    assert station_id_from_args(p.parse_args(["--no-confirm"]), "watch") is None
    for bad, word in (("a/b", "--station-id"), ("#", "--station-id"), ("x" * 65, "--station-id")):
        with pytest.raises(ValueError, match=word):
            Confirmer(bad, Transport())
    with pytest.raises(ValueError, match="--confirm-interval"):
        Confirmer("ok", Transport(), min_interval_s=0)
