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

import hashlib
import hmac
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from appliance import clock
from appliance.isotime import parse_iso8601
from appliance.textcut import cut
from models.vocabulary import INTENSITY_MAX, MODALITIES, NIPS_ITEM_MAXIMA, NIPS_MAX

SCHEMA_VERSION = 1

#: NIPS items by their message names and their maxima (cry is 0-2, every other item 0-1, total 0-7).
NIPS_ITEMS: dict[str, int] = NIPS_ITEM_MAXIMA

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
            items[name] = round(_number(f"nips_items.{name}", value, 0, NIPS_ITEMS[name]), 4)  # as nips

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
    confirmations: Mapping[str, Any] | None = None,
    source_restarts: Mapping[str, int] | None = None,
    model: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the retained health message: what works, how fast, and how far behind the outbox is.

    ``state`` is ``ok`` (scoring), ``degraded`` (scoring with something missing) or ``no_score`` (not
    scoring: all modalities missing, engines failed); ``detail`` is human text for the ward screen.
    ``confirmations`` is what the stations confirmed having stored (``appliance.mqtt.confirmations``); the
    publisher adds it, checked here against ``CONFIRMATIONS_HEALTH_SCHEMA``'s rules. ``source_restarts``
    (optional) counts, per source, how often its driver thread died and was restarted. ``model`` (optional, once
    the engines are loaded) names the model: ``version`` (what scores carry), ``config`` (network size) and
    ``card`` (``version``, ``path``, ``summary`` of its model card, or None when the export carries none).
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
    if confirmations is not None:
        msg["confirmations"] = _confirmations_health(confirmations)
    if source_restarts is not None:
        msg["source_restarts"] = {_text("source_restarts key", k, max_len=64): _integer(f"source_restarts.{k}", v)
                                  for k, v in source_restarts.items()}
    if model is not None:
        msg["model"] = _model_health(model)
    return msg


def _model_health(value: Mapping[str, Any]) -> dict[str, Any]:
    """The health message's ``model`` block, checked field by field (names the field on refusal)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"model: expected a mapping, got {type(value).__name__}")
    card = value.get("card")
    if card is not None and not isinstance(card, Mapping):
        raise ValueError(f"model.card: expected a mapping or None, got {type(card).__name__}")
    return {
        "version": _text("model.version", value.get("version")),
        "config": _text("model.config", value.get("config"), max_len=64),
        "card": None if card is None else {
            "version": _text("model.card.version", card.get("version")),
            "path": _text("model.card.path", card.get("path"), max_len=500),
            "summary": _text("model.card.summary", card.get("summary"), max_len=MODEL_SUMMARY_MAX),
        },
    }


def _confirmations_health(value: Mapping[str, Any]) -> dict[str, Any]:
    """The health message's ``confirmations`` block, checked field by field (names the field on refusal)."""
    if not isinstance(value, Mapping):
        raise ValueError(f"confirmations: expected a mapping, got {type(value).__name__}")
    state = value.get("state")
    if state not in CONFIRMATION_STATES:
        raise ValueError(f"confirmations.state: {state!r} is not one of {', '.join(CONFIRMATION_STATES)}")
    unconfirmed = value.get("unconfirmed")
    if (state == "none") != (unconfirmed is None):
        raise ValueError("confirmations.unconfirmed: null exactly when no station confirms (state 'none')")
    gaps = value.get("gaps", [])
    if not isinstance(gaps, (list, tuple)) or len(gaps) > MAX_HEALTH_GAPS:
        raise ValueError(f"confirmations.gaps: expected at most {MAX_HEALTH_GAPS} [first, last] ranges")
    stations = value.get("stations", {})
    if not isinstance(stations, Mapping) or len(stations) > MAX_CONFIRMING_STATIONS:
        raise ValueError(f"confirmations.stations: expected at most {MAX_CONFIRMING_STATIONS} stations")
    highest = value.get("highest_published")
    return {
        "state": state,
        "grace_s": _number("confirmations.grace_s", value.get("grace_s"), 0),
        "unconfirmed": None if unconfirmed is None else _integer("confirmations.unconfirmed", unconfirmed),
        "awaiting": _integer("confirmations.awaiting", value.get("awaiting", 0)),
        "gaps": [list(_range("confirmations.gaps[]", g)) for g in gaps],
        "highest_published": None if highest is None else _integer("confirmations.highest_published", highest),
        "stations": {
            _text("confirmations.stations key", name, max_len=MAX_STATION_ID_LEN): {
                "through": _integer(f"confirmations.stations.{name}.through", entry.get("through")),
                "highest": _integer(f"confirmations.stations.{name}.highest", entry.get("highest")),
                "age_s": _number(f"confirmations.stations.{name}.age_s", entry.get("age_s"), 0),
            }
            for name, entry in stations.items()
        },
        "invalid": _integer("confirmations.invalid", value.get("invalid", 0)),
    }


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


# ----------------------------------------------------------------------------------------- confirmations
# "Delivered" at the device means the broker took the score (PUBACK); only a station can say it stored it.
# Each station publishes, per bed, what it has stored of that device's sequence on
# ``<prefix>/confirm/<station-id>`` (retained, QoS 1; ``appliance.station.confirm``), and the device counts the
# scores no station has confirmed (``appliance.mqtt.confirmations``). The claim: every sequence in
# [since, highest] is stored except those in ``missing``; ``through`` (the highest contiguous one) is
# ``missing[0][0] - 1``, or ``highest`` when nothing is missing. Sequences below ``since`` are not claimed.

#: Largest confirmation payload accepted (bytes): 32 ranges of two 19-digit numbers fit in 1.5 kB.
MAX_CONFIRMATION_BYTES = 4096
#: Most missing ranges one confirmation carries (a station forgets its oldest gaps beyond this).
MAX_MISSING_RANGES = 32
#: Most stations a device keeps track of, and most gap ranges its health message lists.
MAX_CONFIRMING_STATIONS = 16
MAX_HEALTH_GAPS = 8
MODEL_SUMMARY_MAX = 300  # health ``model.card.summary``: one line of the model card (models/card.py summary)
MAX_STATION_ID_LEN = 64
#: Health ``confirmations.state``: ``none`` (no station has confirmed anything: nothing can be judged) or
#: ``confirming`` (at least one station's confirmation is known; ``unconfirmed`` counts what none has stored).
CONFIRMATION_STATES = ("none", "confirming")
_SEQ_MAX = 2**63 - 1  # the outbox counter is an SQLite INTEGER


def _range(name: str, value: Any) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{name}: expected [first, last], got {value!r:.80}")
    first, last = (_integer(name, v) for v in value)
    if last < first:
        raise ValueError(f"{name}: last {last} is before first {first}")
    return first, last


@dataclass(frozen=True)
class Confirmation:
    """One station's claim about one device's scores (see the section comment above)."""

    device_id: str
    since: int
    through: int
    highest: int
    missing: tuple[tuple[int, int], ...] = ()
    utc: str | None = None

    def covered(self) -> list[tuple[int, int]]:
        """The stored ranges, oldest first: [since, highest] without the missing ranges."""
        out, start = [], self.since
        for first, last in self.missing:
            out.append((start, first - 1))
            start = last + 1
        out.append((start, self.highest))
        return out

    def covers(self, sequence: int) -> bool:
        return self.since <= sequence <= self.highest and not any(a <= sequence <= b for a, b in self.missing)


def _check_claim(since: int, highest: int, missing: Iterable[Any]) -> tuple[tuple[int, int], ...]:
    """The missing ranges if they fit the claim: inside (since, highest), ascending, apart, at most 32."""
    if highest < since:
        raise ValueError(f"confirmation.highest: {highest} is below since {since}")
    if highest > _SEQ_MAX:
        raise ValueError(f"confirmation.highest: {highest} is beyond a 64-bit sequence")
    ranges: list[tuple[int, int]] = []
    if not isinstance(missing, (list, tuple)):
        raise ValueError(f"confirmation.missing: expected a list of [first, last], got {type(missing).__name__}")
    if len(missing) > MAX_MISSING_RANGES:
        raise ValueError(f"confirmation.missing: {len(missing)} ranges, at most {MAX_MISSING_RANGES}")
    floor = since + 1  # since itself is stored (it is the first stored sequence)
    for i, item in enumerate(missing):
        first, last = _range(f"confirmation.missing[{i}]", item)
        if first < floor or last >= highest:
            raise ValueError(f"confirmation.missing[{i}]: [{first}, {last}] must lie inside ({since}, {highest}), "
                             f"ascending and apart")
        ranges.append((first, last))
        floor = last + 2
    return tuple(ranges)


def build_confirmation(*, device_id: str, since: int, highest: int,
                       missing: Iterable[tuple[int, int]] = (), utc: str | None = None) -> dict[str, Any]:
    """Build a station's confirmation for one bed; ``through`` is derived so it cannot disagree."""
    since = _integer("confirmation.since", since)
    highest = _integer("confirmation.highest", highest)
    ranges = _check_claim(since, highest, list(missing))
    return {
        "schema_version": SCHEMA_VERSION,
        "type": "confirmation",
        "device_id": _text("confirmation.device_id", device_id),
        "utc": utc or _utc_now_iso(),
        "since": since,
        "through": ranges[0][0] - 1 if ranges else highest,
        "highest": highest,
        "missing": [list(r) for r in ranges],
    }


def parse_confirmation(payload: bytes) -> Confirmation:
    """A confirmation as received by the device: bounded size, a UTF-8 JSON object, every field typed and
    consistent; ``ValueError`` naming the field otherwise (the device counts, logs and ignores it)."""
    if len(payload) > MAX_CONFIRMATION_BYTES:
        raise ValueError(f"confirmation: payload of {len(payload)} bytes exceeds {MAX_CONFIRMATION_BYTES}")
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"confirmation: not UTF-8 JSON ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(body, dict):
        raise ValueError(f"confirmation: must be a JSON object, got {type(body).__name__}")
    if body.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"confirmation.schema_version: expected {SCHEMA_VERSION}, "
                         f"got {body.get('schema_version')!r:.40}")
    if body.get("type") != "confirmation":
        raise ValueError(f"confirmation.type: expected 'confirmation', got {body.get('type')!r:.40}")
    device_id = _text("confirmation.device_id", body.get("device_id"))
    since = _integer("confirmation.since", body.get("since"))
    through = _integer("confirmation.through", body.get("through"))
    highest = _integer("confirmation.highest", body.get("highest"))
    ranges = _check_claim(since, highest, body.get("missing", []))
    want = ranges[0][0] - 1 if ranges else highest
    if through != want:
        raise ValueError(f"confirmation.through: {through} does not match since/missing/highest (expected {want})")
    utc = body.get("utc")
    if utc is not None and (not isinstance(utc, str) or len(utc) > 40):
        raise ValueError(f"confirmation.utc: expected an ISO 8601 string, got {utc!r:.60}")
    return Confirmation(device_id=device_id, since=since, through=through, highest=highest, missing=ranges, utc=utc)


# --------------------------------------------------------------------------------------------- commands
# Who may command a bed, and how the device checks it.
#
# Authentication is layered. (1) The broker is the gate: ``allow_anonymous false``, TLS, and an ACL in which
# only the central station's user may write ``neopain/<site>/<bed>/cmd/#`` and each bed's user may only write
# under its own prefix and read its own ``cmd/#`` (tests/reliability/test_security.py runs exactly that
# broker). A bed can therefore neither publish another bed's scores nor command another bed. (2) The device
# still treats every command payload as hostile input: size limit, UTF-8 JSON object, known name, typed
# envelope, target bed, freshness and replay (a command id is executed at most once), and -- when a station
# key is configured (``CommandGuard(key=...)``) -- an HMAC-SHA256 over the topic and the payload, so that a
# broker account leak alone cannot command a cot. Every refusal is a ``CommandError`` whose message names the
# field; the publisher logs and counts it and carries on.
#
# Envelope keys (optional without a key; ``command_id``, ``sent_utc`` and ``hmac`` required with one) are taken
# out of the payload before the handler sees the arguments:
#
#   command_id  str, 1..64 chars [A-Za-z0-9_.:-]   at-most-once: a repeat within the freshness window is refused
#   sent_utc    ISO 8601 UTC ("...Z")                refused when further than ``max_skew_s`` from the device clock
#   bed         str                                  must equal this device's bed topic level
#   hmac        64 hex chars                         HMAC-SHA256(key, topic + "\n" + canonical JSON without hmac)

#: Largest command payload accepted (bytes): commands are a handful of short fields; anything bigger is an
#: attack or a bug, and a bound keeps JSON parsing cheap on paho's network thread.
MAX_COMMAND_BYTES = 4096
#: Default freshness window for ``sent_utc`` (seconds either side of the device's wall clock).
COMMAND_MAX_SKEW_S = 120.0
ENVELOPE_KEYS = ("command_id", "sent_utc", "bed", "hmac")
_COMMAND_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


@dataclass(frozen=True)
class Command:
    """A command received on ``<prefix>/cmd/<name>``: the name comes from the topic, arguments from JSON.

    ``args`` never contains the envelope keys (``ENVELOPE_KEYS``); ``command_id``/``sent_utc`` are kept here
    for logs and de-duplication."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    topic: str = ""
    command_id: str | None = None
    sent_utc: str | None = None


class CommandError(ValueError):
    """A command that must not be executed. ``kind``: ``malformed`` (bad bytes, JSON, size or envelope field),
    ``unknown`` (name), ``unauthenticated`` (missing or wrong HMAC), ``stale`` (``sent_utc`` outside the
    window) or ``replayed`` (``command_id`` already executed)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def canonical_command(topic: str, body: Mapping[str, Any]) -> bytes:
    """The bytes an HMAC covers: the topic, a newline, and ``body`` (without ``hmac``) as sorted compact
    ASCII JSON. Binding the topic stops a signed command from being replayed to another bed or command."""
    unsigned = {k: v for k, v in body.items() if k != "hmac"}
    text = json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return topic.encode("utf-8", "surrogatepass") + b"\n" + text.encode("ascii")


def sign_command(topic: str, args: Mapping[str, Any], key: bytes, *, command_id: str | None = None,
                 sent_utc: str | None = None, bed: str | None = None) -> bytes:
    """A station-side command payload for ``topic``: ``args`` plus a fresh envelope and its HMAC."""
    body: dict[str, Any] = dict(args)
    body["command_id"] = command_id or str(uuid.uuid4())
    body["sent_utc"] = sent_utc or _utc_now_iso()
    if bed is not None:
        body["bed"] = bed
    body["hmac"] = hmac.new(key, canonical_command(topic, body), hashlib.sha256).hexdigest()
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _parse_utc(name: str, value: Any) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise CommandError("malformed", f"{name}: expected an ISO 8601 UTC time string, got {value!r:.60}")
    try:
        when = parse_iso8601(value)
    except ValueError:
        raise CommandError("malformed", f"{name}: not an ISO 8601 time: {value!r}") from None
    if when.tzinfo is None:
        raise CommandError("malformed", f"{name}: needs a UTC offset or 'Z', got {value!r}")
    try:
        return when.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # "0001-01-01T00:00:00+14:00" has no UTC equivalent
        raise CommandError("malformed", f"{name}: {value!r} is out of range") from None


def _refuse_constant(token: str) -> Any:
    """``json.loads`` accepts NaN/Infinity by default; a command has no use for them (and canonical JSON
    for the HMAC could not encode them)."""
    raise ValueError(f"{token} is not JSON")


def parse_command(
    name: str, payload: bytes, *, topic: str = "", known: frozenset[str] = KNOWN_COMMANDS, bed: str | None = None
) -> Command:
    """Parse one command (stateless checks): ``payload`` must be empty or a UTF-8 JSON object of at most
    ``MAX_COMMAND_BYTES``; ``name`` must be known; envelope keys, when present, must have the right types and
    ``bed`` (when both are given) must be this device's bed.

    Raises ``CommandError`` instead of guessing, so the publisher can count and log bad commands and carry on.
    Freshness, replay and HMAC need state or a key: see :class:`CommandGuard`.
    """
    return _parse_command(name, payload, topic=topic, known=known, bed=bed)[0]


def _parse_command(name: str, payload: bytes, *, topic: str, known: frozenset[str],
                   bed: str | None) -> tuple[Command, dict[str, Any]]:
    """:func:`parse_command` plus the decoded JSON object (the HMAC check needs the envelope as sent)."""
    if name not in known:
        raise CommandError("unknown", f"command {cut(name)} is not one of {', '.join(sorted(known))}")
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError("malformed", f"command {name!r}: payload of {len(payload)} bytes exceeds "
                                        f"{MAX_COMMAND_BYTES}")
    if not payload.strip():
        return Command(name=name, args={}, topic=topic), {}
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError; "[[[[..." nesting
        raise CommandError("malformed", f"command {name!r}: payload is not UTF-8 JSON ({type(exc).__name__}: "
                                        f"{str(exc)[:120]})") from None
    if not isinstance(body, dict):
        raise CommandError("malformed", f"command {name!r}: payload must be a JSON object, got {type(body).__name__}")
    command_id = body.get("command_id")
    if command_id is not None and (not isinstance(command_id, str) or not 0 < len(command_id) <= 64
                                   or not set(command_id) <= _COMMAND_ID_CHARS):
        raise CommandError("malformed", f"command {name!r}: command_id: expected 1-64 characters "
                                        f"[A-Za-z0-9_.:-], got {command_id!r:.80}")
    sent = body.get("sent_utc")
    if sent is not None:
        _parse_utc("sent_utc", sent)
    target = body.get("bed")
    if target is not None and not isinstance(target, str):
        raise CommandError("malformed", f"command {name!r}: bed: expected a string, got {target!r:.80}")
    if target is not None and bed is not None and target != bed:
        raise CommandError("malformed", f"command {name!r}: bed: {target!r:.80} is not this bed ({bed!r})")
    mac = body.get("hmac")
    if mac is not None and (not isinstance(mac, str) or len(mac) != 64
                            or any(c not in "0123456789abcdef" for c in mac)):
        raise CommandError("malformed", f"command {name!r}: hmac: expected 64 lowercase hex digits")
    args = {k: v for k, v in body.items() if k not in ENVELOPE_KEYS}
    return Command(name=name, args=args, topic=topic, command_id=command_id, sent_utc=sent), body


class CommandGuard:
    """The device's stateful command checks, on top of :func:`parse_command`: freshness, replay, HMAC.

    ``key`` (the station key, from a 0600 file or a systemd credential) makes ``command_id``, ``sent_utc`` and
    ``hmac`` mandatory; without it they are checked when present. Remembered ids are bounded (``max_ids``,
    oldest forgotten first) and only need to outlive the freshness window, after which ``sent_utc`` refuses a
    replay by itself. Used from paho's network thread only (not thread-safe by design: one caller).
    """

    def __init__(self, *, bed: str | None = None, known: frozenset[str] = KNOWN_COMMANDS, key: bytes | None = None,
                 max_skew_s: float = COMMAND_MAX_SKEW_S, max_ids: int = 4096) -> None:
        if key is not None and len(key) < 16:
            raise ValueError(f"command key: {len(key)} bytes; at least 16 needed")
        self.bed = bed
        self.known = known
        self._key = key
        self.max_skew_s = float(max_skew_s)
        self.max_ids = max_ids
        self._seen: dict[str, None] = {}  # insertion-ordered set

    @property
    def requires_signature(self) -> bool:
        return self._key is not None

    def check(self, name: str, payload: bytes, *, topic: str, now: datetime | None = None) -> Command:
        """The command, or ``CommandError`` naming the field; a command that passes is remembered (replay)."""
        command, body = _parse_command(name, payload, topic=topic, known=self.known, bed=self.bed)
        if self._key is not None:
            for key in ("command_id", "sent_utc", "hmac"):
                if body.get(key) is None:
                    raise CommandError("unauthenticated", f"command {name!r}: {key}: required (a station key is set)")
            try:
                signed = canonical_command(topic, body)
            except (ValueError, RecursionError) as exc:
                raise CommandError("malformed", f"command {name!r}: cannot be canonicalised ({exc})") from None
            want = hmac.new(self._key, signed, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(want, body["hmac"]):
                raise CommandError("unauthenticated", f"command {name!r}: hmac: does not verify for {topic!r}")
        if command.sent_utc is not None:
            now = now or datetime.now(timezone.utc)
            skew = (_parse_utc("sent_utc", command.sent_utc) - now).total_seconds()
            if abs(skew) > self.max_skew_s:
                raise CommandError("stale", f"command {name!r}: sent_utc: {command.sent_utc} is {skew:+.0f} s from "
                                            f"the device clock (window ±{self.max_skew_s:g} s)")
        if command.command_id is not None:
            if command.command_id in self._seen:
                raise CommandError("replayed", f"command {name!r}: command_id: {command.command_id!r} was already "
                                               f"executed")
            self._seen[command.command_id] = None
            while len(self._seen) > self.max_ids:
                del self._seen[next(iter(self._seen))]
        return command


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

_RANGE = {"type": "array", "prefixItems": [_UINT, _UINT], "minItems": 2, "maxItems": 2}

#: The ``confirmations`` block of the health message (``appliance.mqtt.confirmations``).
CONFIRMATIONS_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["state", "grace_s", "unconfirmed", "awaiting", "gaps", "highest_published", "stations", "invalid"],
    "properties": {
        "state": {"enum": list(CONFIRMATION_STATES)},
        "grace_s": {"type": "number", "minimum": 0},
        "unconfirmed": {"type": ["integer", "null"], "minimum": 0},
        "awaiting": _UINT,
        "gaps": {"type": "array", "maxItems": MAX_HEALTH_GAPS, "items": _RANGE},
        "highest_published": {"type": ["integer", "null"], "minimum": 0},
        "stations": {
            "type": "object",
            "maxProperties": MAX_CONFIRMING_STATIONS,
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["through", "highest", "age_s"],
                "properties": {"through": _UINT, "highest": _UINT, "age_s": {"type": "number", "minimum": 0}},
            },
        },
        "invalid": _UINT,
    },
    # "No station confirms" is never written as "0 unconfirmed".
    "if": {"properties": {"state": {"const": "none"}}},
    "then": {"properties": {"unconfirmed": {"type": "null"}}},
    "else": {"properties": {"unconfirmed": {"type": "integer"}}},
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
        "confirmations": CONFIRMATIONS_HEALTH_SCHEMA,
        "source_restarts": {"type": "object", "additionalProperties": _UINT},
        "model": {
            "type": "object",
            "additionalProperties": False,
            "required": ["version", "config", "card"],
            "properties": {
                "version": {"type": "string", "minLength": 1},
                "config": {"type": "string", "minLength": 1},
                "card": {
                    "type": ["object", "null"],
                    "additionalProperties": False,
                    "required": ["version", "path", "summary"],
                    "properties": {"version": {"type": "string", "minLength": 1},
                                   "path": {"type": "string", "minLength": 1},
                                   "summary": {"type": "string", "minLength": 1, "maxLength": MODEL_SUMMARY_MAX}},
                },
            },
        },
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

CONFIRMATION_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://neopain.example/schema/confirmation-1.json",
    "title": "neopain confirmation (station -> device, neopain/<site>/<bed>/confirm/<station-id>, retained)",
    "type": "object",
    "additionalProperties": False,
    "required": ["schema_version", "type", "device_id", "utc", "since", "through", "highest", "missing"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "type": {"const": "confirmation"},
        "device_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "utc": _ISO,
        "since": _UINT,
        "through": _UINT,
        "highest": _UINT,
        "missing": {"type": "array", "maxItems": MAX_MISSING_RANGES, "items": _RANGE},
    },
}
