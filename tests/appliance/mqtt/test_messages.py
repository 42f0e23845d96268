"""Message builders: schema-valid output, derived intensity, and refusals that name the field."""
from __future__ import annotations

import json
import math
import uuid

import jsonschema
import pytest

from appliance.mqtt import messages

VALIDATOR = jsonschema.Draft202012Validator


def score(**over):
    base = dict(
        device_id="dev-1", sequence=7, window_start_ns=1_000_000_000, window_end_ns=3_000_000_000, nips=3.5,
        confidence=0.9, modalities={"video": {"used": True, "weight": 0.6}, "audio": {"used": False, "weight": 0.0},
                                    "vitals": {"used": True, "weight": 0.4}},
        model_version="fusion-1.2", calibration_version="cal-2024-01", latency_ms={"preprocess": 12.5, "inference": 40},
        nips_items={"facial_expression": 1, "cry": 2, "breathing": 0, "arms": 0.5, "legs": 0, "state_of_arousal": 1},
        quality_flags=["face_partial"],
    )
    base.update(over)
    return messages.build_score(**base)


def test_score_is_schema_valid_and_round_trips_json() -> None:
    VALIDATOR.check_schema(messages.SCORE_SCHEMA)
    msg = score()
    VALIDATOR(messages.SCORE_SCHEMA).validate(msg)
    again = json.loads(messages.encode(msg))
    assert again == msg
    assert uuid.UUID(msg["message_id"]).version == 4
    assert msg["window"]["start_utc"] < msg["window"]["end_utc"]


@pytest.mark.parametrize("nips", [0.0, 1.0, 3.5, 7.0])
def test_intensity_is_nips_times_10_over_7(nips: float) -> None:
    msg = score(nips=nips)
    assert math.isclose(msg["intensity"], nips * 10 / 7, abs_tol=1e-4)
    assert 0 <= msg["intensity"] <= 10


def test_message_ids_are_unique() -> None:
    assert len({score()["message_id"] for _ in range(50)}) == 50


@pytest.mark.parametrize(
    "over, field",
    [
        ({"nips": 7.01}, "nips"),
        ({"nips": -0.1}, "nips"),
        ({"nips": float("nan")}, "nips"),
        ({"nips": True}, "nips"),
        ({"confidence": 1.5}, "confidence"),
        ({"sequence": -1}, "sequence"),
        ({"device_id": ""}, "device_id"),
        ({"window_end_ns": 10}, "window.end_mono_ns"),
        ({"nips_items": {"cry": 3}}, "nips_items.cry"),
        ({"nips_items": {"frown": 0}}, "nips_items.frown"),
        ({"modalities": {"smell": {"used": True, "weight": 1}}}, "modalities.smell"),
        ({"modalities": {"video": {"used": True, "weight": 2}}}, "modalities.video.weight"),
        ({"modalities": {"video": {"used": False, "weight": 0}}}, "modalities"),
        ({"latency_ms": {"inference": -1}}, "latency_ms.inference"),
        ({"message_id": "not-a-uuid"}, "message_id"),
        ({"model_version": ""}, "model_version"),
    ],
)
def test_score_refuses_bad_values_naming_the_field(over: dict, field: str) -> None:
    with pytest.raises(ValueError) as err:
        score(**over)
    assert str(err.value).startswith(field + ":") or str(err.value).startswith(field + " ")


def test_schema_rejects_what_builders_refuse() -> None:
    """The published schema and the builders agree: a hand-edited out-of-range message fails validation."""
    msg = score()
    v = VALIDATOR(messages.SCORE_SCHEMA)
    for path, bad in [(("nips",), 8), (("intensity",), 11), (("confidence",), -0.1), (("sequence",), -1)]:
        broken = json.loads(json.dumps(msg))
        broken[path[0]] = bad
        assert not v.is_valid(broken), path


def test_health_and_vitals_are_schema_valid() -> None:
    h = messages.build_health(device_id="d", sources={"camera": True, "mic": False}, fps={"camera": 14.8},
                              engine_backend="onnxruntime", outbox_depth=3, last_score_age_s=1.5, state="degraded",
                              detail="microphone down")
    jsonschema.validate(h, messages.HEALTH_SCHEMA, cls=VALIDATOR)
    v = messages.build_vitals(device_id="d", t_mono_ns=5_000_000_000, hr_bpm=142, spo2_pct=None, source="masimo")
    jsonschema.validate(v, messages.VITALS_SCHEMA, cls=VALIDATOR)
    with pytest.raises(ValueError, match="^state:"):
        messages.build_health(device_id="d", sources={}, state="fine")
    with pytest.raises(ValueError, match="^sources.camera:"):
        messages.build_health(device_id="d", sources={"camera": "up"})
    with pytest.raises(ValueError, match="^spo2_pct:"):
        messages.build_vitals(device_id="d", t_mono_ns=0, hr_bpm=None, spo2_pct=101)


def test_parse_command() -> None:
    c = messages.parse_command("calibration/start", b'{"session": "s1"}', topic="x/cmd/calibration/start")
    assert c.name == "calibration/start" and c.args == {"session": "s1"}
    assert messages.parse_command("health/request", b"").args == {}
    for payload in (b"{not json", b"[1, 2]", b"\xff\xfe", b'"text"'):
        with pytest.raises(messages.CommandError) as err:
            messages.parse_command("calibration/start", payload)
        assert err.value.kind == "malformed"
    with pytest.raises(messages.CommandError) as err:
        messages.parse_command("reboot", b"{}")
    assert err.value.kind == "unknown"
