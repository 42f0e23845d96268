"""The JSON messages the appliance publishes over MQTT, their builders and their JSON Schema.

Builders are the only way the device makes a message: they refuse out-of-range or malformed values with a
``ValueError`` that names the field, because a wrong score on a ward screen is worse than no score. The schema
(``SCORE_SCHEMA`` and friends, plain dicts) is published for the consumers (central station, FHIR bridge) and
checked in the tests; the device itself does not need a validator at run time since the builders enforce the
same rules.

Timing: a window is described twice, on the monotonic clock the samples were stamped with (exact, for
latency and ordering on the device) and in wall-clock UTC (for people and hospital systems), mapped at build
time through ``appliance.clock``.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from appliance import clock

SCHEMA_VERSION = 1
NIPS_MAX = 7
INTENSITY_MAX = 10

#: NIPS items and their maxima (Lawrence et al. 1993): cry is 0-2, every other item 0-1, total 0-7.
NIPS_ITEMS: dict[str, int] = {
    "facial_expression": 1,
    "cry": 2,
    "breathing": 1,
    "arms": 1,
    "legs": 1,
    "state_of_arousal": 1,
}
MODALITIES = ("video", "audio", "vitals")

#: Commands accepted on ``<prefix>/cmd/<name>``; anything else is counted as unknown and ignored.
KNOWN_COMMANDS = frozenset({"calibration/start", "calibration/stop", "calibration/rate", "health/request"})

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"


# ---------------------------------------------------------------------------------------------- validation
def _number(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """A finite real number within [lo, hi]; bools are refused (``True`` is not a score)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name}: {value!r} is outside [{lo}, {hi}]")
    return v


def _integer(name: str, value: Any, lo: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"{name}: {value!r} is below {lo}")
    return value


def _text(name: str, value: Any, *, max_len: int = 200) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    if len(value) > max_len:
        raise ValueError(f"{name}: longer than {max_len} characters")
    return value


def _utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------------- score
def build_score(
    *,
    device_id: str,
    sequence: int,
    window_start_ns: int,
    window_end_ns: int,
    nips: float,
    confidence: float,
    modalities: Mapping[str, Mapping[str, Any]],
    model_version: str,
    calibration_version: str,
    latency_ms: Mapping[str, float],
    nips_items: Mapping[str, float] | None = None,
    quality_flags: Iterable[str] = (),
    message_id: str | None = None,
    window_start_utc: str | None = None,
    window_end_utc: str | None = None,
) -> dict[str, Any]:
    """Build one score message (``type: score``).

    ``modalities`` maps each of video/audio/vitals to ``{"used": bool, "weight": float in [0, 1]}``; at least
    one must be used — with every modality missing the appliance publishes health, never a score.
    ``intensity`` is derived here (nips * 10 / 7) so producers cannot disagree with it. ``sequence`` must come
    from the device's durable counter (``Outbox.next_sequence``) so consumers can order and de-duplicate.
    ``window_*_utc`` default to the mapping of the monotonic stamps through the clock at build time.
    """
    device_id = _text("device_id", device_id)
    sequence = _integer("sequence", sequence)
    start = _integer("window.start_mono_ns", window_start_ns)
    end = _integer("window.end_mono_ns", window_end_ns)
    if end < start:
        raise ValueError(f"window.end_mono_ns: {end} is before window.start_mono_ns {start}")
    nips_v = _number("nips", nips, 0, NIPS_MAX)
    conf = _number("confidence", confidence, 0, 1)

    mods: dict[str, dict[str, Any]] = {}
    if not isinstance(modalities, Mapping):
        raise ValueError("modalities: expected a mapping of modality -> {used, weight}")
    for name, entry in modalities.items():
        if name not in MODALITIES:
            raise ValueError(f"modalities.{name}: unknown modality (expected one of {', '.join(MODALITIES)})")
        if not isinstance(entry, Mapping) or set(entry) != {"used", "weight"}:
            raise ValueError(f"modalities.{name}: expected exactly the keys 'used' and 'weight'")
        if not isinstance(entry["used"], bool):
            raise ValueError(f"modalities.{name}.used: expected a bool, got {entry['used']!r}")
        mods[name] = {"used": entry["used"], "weight": _number(f"modalities.{name}.weight", entry["weight"], 0, 1)}
    if not any(m["used"] for m in mods.values()):
        raise ValueError("modalities: no modality used; publish health instead of a score")

    items: dict[str, float] | None = None
    if nips_items is not None:
        items = {}
        for name, value in nips_items.items():
            if name not in NIPS_ITEMS:
                raise ValueError(f"nips_items.{name}: unknown NIPS item (expected {', '.join(NIPS_ITEMS)})")
            items[name] = _number(f"nips_items.{name}", value, 0, NIPS_ITEMS[name])

    flags = [_text("quality_flags[]", f, max_len=64) for f in quality_flags]
    lat: dict[str, float] = {}
    for name, value in latency_ms.items():
        lat[_text("latency_ms key", name, max_len=64)] = _number(f"latency_ms.{name}", value, 0)

    msg: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "score",
        "message_id": _uuid("message_id", message_id),
        "device_id": device_id,
        "sequence": sequence,
        "created_utc": _utc_now_iso(),
        "window": {
            "start_utc": window_start_utc or clock.utc_iso(start),
            "end_utc": window_end_utc or clock.utc_iso(end),
            "start_mono_ns": start,
            "end_mono_ns": end,
        },
        "nips": round(nips_v, 4),
        "intensity": round(nips_v * INTENSITY_MAX / NIPS_MAX, 4),
        "confidence": round(conf, 4),
        "modalities": mods,
        "quality_flags": flags,
        "model_version": _text("model_version", model_version),
        "calibration_version": _text("calibration_version", calibration_version),
        "latency_ms": lat,
    }
    if items is not None:
        msg["nips_items"] = items
    return msg


def _uuid(name: str, value: str | None) -> str:
    if value is None:
        return str(uuid.uuid4())
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{name}: not a UUID: {value!r}") from exc


# ------------------------------------------------------------------------------------------ health, vitals
def build_health(
    *,
    device_id: str,
    sources: Mapping[str, bool],
    fps: Mapping[str, float] | None = None,
    engine_backend: str | None = None,
    outbox_depth: int = 0,
    outbox_dropped_overflow: int = 0,
    outbox_dropped_expired: int = 0,
    last_score_age_s: float | None = None,
    state: str = "ok",
    detail: str | None = None,
) -> dict[str, Any]:
    """Build the retained health message: what works, how fast, and how far behind the outbox is.

    ``state`` is ``ok`` (scoring), ``degraded`` (scoring with something missing) or ``no_score`` (not
    scoring: all modalities missing, engines failed); ``detail`` is human text for the ward screen.
    """
    if state not in ("ok", "degraded", "no_score"):
        raise ValueError(f"state: {state!r} is not one of ok, degraded, no_score")
    src: dict[str, bool] = {}
    for name, up in sources.items():
        if not isinstance(up, bool):
            raise ValueError(f"sources.{name}: expected a bool (up/down), got {up!r}")
        src[_text("sources key", name, max_len=64)] = up
    rates = {_text("fps key", k, max_len=64): _number(f"fps.{k}", v, 0) for k, v in (fps or {}).items()}
    msg: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "type": "health",
        "device_id": _text("device_id", device_id),
        "utc": _utc_now_iso(),
        "state": state,
        "sources": src,
        "fps": rates,
        "engine_backend": None if engine_backend is None else _text("engine_backend", engine_backend),
        "outbox": {
            "depth": _integer("outbox.depth", outbox_depth),
            "dropped_overflow": _integer("outbox.dropped_overflow", outbox_dropped_overflow),
            "dropped_expired": _integer("outbox.dropped_expired", outbox_dropped_expired),
        },
        "last_score_age_s": None if last_score_age_s is None else _number("last_score_age_s", last_score_age_s, 0),
    }
    if detail is not None:
        msg["detail"] = _text("detail", detail, max_len=500)
    return msg


def build_vitals(
    *, device_id: str, t_mono_ns: int, hr_bpm: float | None, spo2_pct: float | None, source: str | None = None
) -> dict[str, Any]:
    """Build a 1 Hz vitals message (values as read from the monitor; ``None`` = not available)."""
    t = _integer("t_mono_ns", t_mono_ns)
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "vitals",
        "device_id": _text("device_id", device_id),
        "utc": clock.utc_iso(t),
        "t_mono_ns": t,
        "hr_bpm": None if hr_bpm is None else _number("hr_bpm", hr_bpm, 0, 350),
        "spo2_pct": None if spo2_pct is None else _number("spo2_pct", spo2_pct, 0, 100),
        "source": None if source is None else _text("source", source, max_len=64),
    }


def encode(message: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; ``allow_nan=False`` so a NaN that slipped past a builder fails here, not downstream."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False, sort_keys=True).encode("utf-8")


# --------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class Command:
    """A command received on ``<prefix>/cmd/<name>``: the name comes from the topic, arguments from JSON."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    topic: str = ""


class CommandError(ValueError):
    """A command payload that cannot be used; ``kind`` is ``malformed`` or ``unknown``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_command(
    name: str, payload: bytes, *, topic: str = "", known: frozenset[str] = KNOWN_COMMANDS
) -> Command:
    """Parse one command: ``payload`` must be empty or a UTF-8 JSON object; ``name`` must be known.

    Raises ``CommandError`` (kind ``malformed`` or ``unknown``) instead of guessing, so the publisher can count
    and log bad commands and carry on.
    """
    if name not in known:
        raise CommandError("unknown", f"command {name!r} is not one of {', '.join(sorted(known))}")
    if not payload.strip():
        return Command(name=name, args={}, topic=topic)
    try:
        args = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError("malformed", f"command {name!r}: payload is not UTF-8 JSON ({exc})") from exc
    if not isinstance(args, dict):
        raise CommandError("malformed", f"command {name!r}: payload must be a JSON object, got {type(args).__name__}")
    return Command(name=name, args=args, topic=topic)


# ----------------------------------------------------------------------------------------------- schemas
_NUM = {"type": "number"}
_ISO = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"}
_UINT = {"type": "integer", "minimum": 0}

SCORE_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://neopain.example/schema/score-1.json",
    "title": "neopain score",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version", "type", "message_id", "device_id", "sequence", "created_utc", "window", "nips",
        "intensity", "confidence", "modalities", "quality_flags", "model_version", "calibration_version",
        "latency_ms",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "type": {"const": "score"},
        "message_id": {"type": "string", "format": "uuid",
                       "pattern": r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"},
        "device_id": {"type": "string", "minLength": 1},
        "sequence": _UINT,
        "created_utc": _ISO,
        "window": {
            "type": "object",
            "additionalProperties": False,
            "required": ["start_utc", "end_utc", "start_mono_ns", "end_mono_ns"],
            "properties": {"start_utc": _ISO, "end_utc": _ISO, "start_mono_ns": _UINT, "end_mono_ns": _UINT},
        },
        "nips": {"type": "number", "minimum": 0, "maximum": NIPS_MAX},
        "intensity": {"type": "number", "minimum": 0, "maximum": INTENSITY_MAX},
        "nips_items": {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: {"type": "number", "minimum": 0, "maximum": v} for k, v in NIPS_ITEMS.items()},
        },
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "modalities": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                m: {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["used", "weight"],
                    "properties": {"used": {"type": "boolean"}, "weight": {"type": "number", "minimum": 0, "maximum": 1}},
                }
                for m in MODALITIES
            },
        },
        "quality_flags": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "model_version": {"type": "string", "minLength": 1},
        "calibration_version": {"type": "string", "minLength": 1},
        "latency_ms": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
    },
}

HEALTH_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://neopain.example/schema/health-1.json",
    "title": "neopain health",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "type", "device_id", "utc", "state", "sources", "fps", "engine_backend",
                 "outbox", "last_score_age_s"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "type": {"const": "health"},
        "device_id": {"type": "string", "minLength": 1},
        "utc": _ISO,
        "state": {"enum": ["ok", "degraded", "no_score"]},
        "sources": {"type": "object", "additionalProperties": {"type": "boolean"}},
        "fps": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
        "engine_backend": {"type": ["string", "null"]},
        "outbox": {
            "type": "object",
            "additionalProperties": False,
            "required": ["depth", "dropped_overflow", "dropped_expired"],
            "properties": {"depth": _UINT, "dropped_overflow": _UINT, "dropped_expired": _UINT},
        },
        "last_score_age_s": {"type": ["number", "null"], "minimum": 0},
        "detail": {"type": "string"},
    },
}

VITALS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://neopain.example/schema/vitals-1.json",
    "title": "neopain vitals",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "type", "device_id", "utc", "t_mono_ns", "hr_bpm", "spo2_pct", "source"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "type": {"const": "vitals"},
        "device_id": {"type": "string", "minLength": 1},
        "utc": _ISO,
        "t_mono_ns": _UINT,
        "hr_bpm": {"type": ["number", "null"], "minimum": 0, "maximum": 350},
        "spo2_pct": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
        "source": {"type": ["string", "null"]},
    },
}
