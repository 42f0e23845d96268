"""The central-station side: ``neopain watch`` (a live table of every bed) and ``neopain bridge`` (FHIR / PCD-01).

Both subscribe to ``neopain/<site>/<bed>/{score,status,health}`` on the ward broker and never talk to a
bedside device directly. Layers, so each can be tested on its own:

- ``BedState`` / ``Board``: what the station knows about each bed, fed by ``Board.ingest(topic, payload, now)``;
- ``render_table(beds, now=...)``: a pure function from that model to text (no clock, no terminal);
- ``StationConnection``: the one place that opens the broker (auth, TLS, refused = error, resubscribe);
- ``Bridge``: score messages -> FHIR Observation (files or POST) and/or ORU^R01 over MLLP, de-duplicated by
  message id and acknowledged to the broker (QoS 1, manual ack) only after every sink has it, so a bridge
  crash or a hospital system outage loses nothing (with ``--client-id``: a persistent broker session).

Safety rule of the table: a score older than ``stale_after_s`` is displayed as *stale* with its age, never as
a current value, and no trend arrow is drawn from stale data. The age of a score is the larger of "since its
window ended" (device clock) and "since it arrived" (station clock), so neither a slow device clock nor a late
delivery can make an old score look fresh.
"""
from __future__ import annotations

import argparse
import json
import logging
import queue
import re
import signal
import ssl
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from appliance import fhir, hl7, messages
from appliance.isotime import parse_utc
from appliance.publish import read_password

log = logging.getLogger(__name__)

TOPIC_ROOT = "neopain"
LEAVES = ("score", "status", "health")
TREND_UP, TREND_DOWN, TREND_FLAT, TREND_NONE = "↑", "↓", "→", " "


# ============================================================================================ bed model
@dataclass(frozen=True)
class ScorePoint:
    """One received score, reduced to what the table and the trend need."""

    message_id: str
    nips: float
    intensity: float
    window_end: datetime  # device clock (UTC)
    received: datetime  # station clock (UTC)
    modalities: tuple[str, ...] = ()
    confidence: float | None = None


@dataclass
class BedState:
    """Everything the station knows about one bed; ``scores`` is oldest first and bounded."""

    site: str
    bed: str
    scores: deque[ScorePoint] = field(default_factory=lambda: deque(maxlen=512))
    status: str | None = None  # "online" / "offline" as last published (retained)
    status_at: datetime | None = None
    health: dict[str, Any] | None = None
    health_at: datetime | None = None
    invalid: int = 0
    duplicates: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.site, self.bed)

    @property
    def last(self) -> ScorePoint | None:
        return self.scores[-1] if self.scores else None


def parse_topic(topic: str) -> tuple[str, str, str] | None:
    """``neopain/<site>/<bed>/<leaf>`` -> (site, bed, leaf) for the leaves we watch, else None."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[3] not in LEAVES or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2], parts[3]


def _parse_utc(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected an ISO 8601 UTC string, got {value!r}")
    return parse_utc(value, name)


def parse_score_point(payload: bytes | str | Mapping[str, Any], received: datetime) -> ScorePoint:
    """Check the fields the station shows and reduce a score message; ValueError names the bad field."""
    msg = json.loads(payload) if isinstance(payload, (bytes, str)) else payload
    if not isinstance(msg, Mapping) or msg.get("type") != "score":
        raise ValueError("score: not a JSON object of type 'score'")
    mid = msg.get("message_id")
    if not isinstance(mid, str) or not mid:
        raise ValueError(f"score.message_id: missing or empty ({mid!r})")
    values = {}
    for key, hi in (("nips", messages.NIPS_MAX), ("intensity", messages.INTENSITY_MAX)):
        v = msg.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
            raise ValueError(f"score.{key}: expected a number in [0, {hi}], got {v!r}")
        values[key] = float(v)
    window = msg.get("window")
    if not isinstance(window, Mapping):
        raise ValueError("score.window: missing")
    end = _parse_utc(window.get("end_utc"), "score.window.end_utc")
    mods = msg.get("modalities") or {}
    used = tuple(m for m in messages.MODALITIES if isinstance(mods.get(m), Mapping) and mods[m].get("used") is True)
    conf = msg.get("confidence")
    return ScorePoint(message_id=mid, nips=values["nips"], intensity=values["intensity"], window_end=end,
                      received=received, modalities=used,
                      confidence=float(conf) if isinstance(conf, (int, float)) and not isinstance(conf, bool) else None)


class Board:
    """All beds seen on the broker. ``ingest`` runs on paho's thread, ``snapshot`` on the drawing thread."""

    def __init__(self, *, max_points: int = 512) -> None:
        self._beds: dict[tuple[str, str], BedState] = {}
        self._seen: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self._lock = threading.Lock()
        self._max_points = max_points

    def ingest(self, topic: str, payload: bytes, received: datetime) -> str:
        """Apply one message; returns what it was: score, status, health, duplicate, invalid or ignored."""
        parsed = parse_topic(topic)
        if parsed is None:
            return "ignored"
        site, bed, leaf = parsed
        with self._lock:
            state = self._beds.get((site, bed))
            if state is None:
                state = self._beds[(site, bed)] = BedState(site, bed, scores=deque(maxlen=self._max_points))
                self._seen[(site, bed)] = OrderedDict()
            try:
                return self._apply(state, leaf, payload, received)
            except (ValueError, UnicodeDecodeError) as exc:
                state.invalid += 1
                log.warning("watch: invalid %s message on %s: %s", leaf, topic, exc)
                return "invalid"

    def _apply(self, state: BedState, leaf: str, payload: bytes, received: datetime) -> str:
        if leaf == "status":
            text = payload.decode("utf-8").strip()
            if text not in (messages.STATUS_ONLINE, messages.STATUS_OFFLINE):
                raise ValueError(f"status: expected online/offline, got {text[:40]!r}")
            state.status, state.status_at = text, received
            return "status"
        if leaf == "health":
            msg = json.loads(payload)
            if not isinstance(msg, dict) or msg.get("type") != "health":
                raise ValueError("health: not a JSON object of type 'health'")
            state.health, state.health_at = msg, received
            return "health"
        point = parse_score_point(payload, received)
        seen = self._seen[state.key]
        if point.message_id in seen:
            state.duplicates += 1
            return "duplicate"
        seen[point.message_id] = None
        while len(seen) > 4 * self._max_points:
            seen.popitem(last=False)
        # Keep the history in window order even if an outbox replay delivers an older score late.
        if state.scores and point.window_end < state.scores[-1].window_end:
            ordered = sorted([*state.scores, point], key=lambda p: p.window_end)
            state.scores.clear()
            state.scores.extend(ordered)
        else:
            state.scores.append(point)
        return "score"

    def snapshot(self) -> list[BedState]:
        """Copies of every bed, sorted by site then bed (natural order for numbered beds)."""
        with self._lock:
            beds = [BedState(b.site, b.bed, deque(b.scores, maxlen=b.scores.maxlen), b.status, b.status_at,
                             dict(b.health) if b.health else None, b.health_at, b.invalid, b.duplicates)
                    for b in self._beds.values()]
        return sorted(beds, key=lambda b: (b.site, _natural(b.bed)))


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


# ============================================================================================ rendering
def score_age_s(point: ScorePoint, now: datetime) -> float:
    """Age of a score: the larger of since-window-end (device clock) and since-arrival (station clock)."""
    return max(0.0, (now - point.window_end).total_seconds(), (now - point.received).total_seconds())


def trend(points: Sequence[ScorePoint], now: datetime, *, window_s: float = 300.0, min_points: int = 3,
          threshold_per_min: float = 0.2) -> str:
    """Arrow from the least-squares slope of NIPS over the last ``window_s`` (by window end time).

    ↑ / ↓ when the slope is at least ``threshold_per_min`` NIPS points per minute (1 point in 5 min by
    default), → when flatter, blank with fewer than ``min_points`` scores in the window.
    """
    recent = [p for p in points if 0 <= (now - p.window_end).total_seconds() <= window_s]
    if len(recent) < max(2, min_points):
        return TREND_NONE
    t0 = recent[0].window_end
    xs = [(p.window_end - t0).total_seconds() / 60.0 for p in recent]
    ys = [p.nips for p in recent]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return TREND_NONE
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if slope >= threshold_per_min:
        return TREND_UP
    if slope <= -threshold_per_min:
        return TREND_DOWN
    return TREND_FLAT


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


_MOD_ABBR = {"video": "V", "audio": "A", "vitals": "H"}  # H: heart (vitals), V video, A audio
_RED, _YELLOW, _DIM, _RESET = "\x1b[31m", "\x1b[33m", "\x1b[2m", "\x1b[0m"
COLUMNS = ("BED", "NIPS", "0-10", "TREND", "AGE", "STATUS", "HEALTH", "INPUTS")


@dataclass(frozen=True)
class Row:
    """One table row as text cells plus what it means (for colouring and for tests)."""

    cells: tuple[str, ...]
    stale: bool
    offline: bool
    nips: float | None


def bed_row(bed: BedState, now: datetime, *, stale_after_s: float, trend_window_s: float) -> Row:
    """The cells of one bed. A stale (or never received) score shows no value and no trend."""
    last = bed.last
    age = None if last is None else score_age_s(last, now)
    stale = last is None or age is None or age > stale_after_s
    if last is None:
        nips_cell, int_cell, arrow = "-", "-", TREND_NONE
    elif stale:
        nips_cell, int_cell, arrow = "stale", "-", TREND_NONE
    else:
        nips_cell, int_cell = f"{last.nips:.1f}", f"{last.intensity:.1f}"
        arrow = trend(list(bed.scores), now, window_s=trend_window_s)
    health = "?"
    if bed.health:
        health = str(bed.health.get("state", "?"))
        if bed.health.get("detail"):
            health += f" ({bed.health['detail']})"
    inputs = "-" if last is None else "".join(_MOD_ABBR[m] if m in last.modalities else "." for m in messages.MODALITIES)
    status = bed.status or "?"
    return Row(cells=(f"{bed.site}/{bed.bed}", nips_cell, int_cell, arrow, format_age(age), status,
                      health[:40], inputs),
               stale=stale, offline=status == messages.STATUS_OFFLINE,
               nips=None if stale or last is None else last.nips)


def render_table(beds: Iterable[BedState], *, now: datetime, stale_after_s: float = 30.0,
                 trend_window_s: float = 300.0, color: bool = False, title: str | None = None) -> str:
    """The whole screen as text: a header line, the column titles and one row per bed.

    Pure: same beds and ``now`` give the same text. ``color`` adds ANSI colours (red: offline or NIPS >= 4,
    i.e. moderate-to-severe pain on the NIPS; yellow: stale) after padding, so alignment is unaffected.
    """
    rows = [bed_row(b, now, stale_after_s=stale_after_s, trend_window_s=trend_window_s) for b in beds]
    widths = [max([len(c)] + [len(r.cells[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    stamp = now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    head = title or "neopain watch"
    lines = [f"{head}  {stamp}  beds: {len(rows)}  stale after {stale_after_s:g}s  "
             f"inputs: V video A audio H vitals", "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r.cells, widths)).rstrip()
        if color:
            if r.offline or (r.nips is not None and r.nips >= 4):
                line = _RED + line + _RESET
            elif r.stale:
                line = _YELLOW + line + _RESET
        lines.append(line)
    if not rows:
        lines.append("(no beds seen yet)")
    return "\n".join(lines) + "\n"


# ============================================================================================ broker
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
    g = parser.add_argument_group("broker")
    g.add_argument("--host", default="127.0.0.1", help="MQTT broker host (default: 127.0.0.1)")
    g.add_argument("--port", type=int, default=1883, help="MQTT broker port (default: 1883)")
    g.add_argument("--site", help="only this site (default: every site on the broker)")
    g.add_argument("--username", help="MQTT user name")
    g.add_argument("--password-file", help="file whose first line is the MQTT password")
    g.add_argument("--tls-ca", help="CA certificate (PEM): enables TLS")
    g.add_argument("--tls-cert", help="client certificate (PEM), with --tls-key")
    g.add_argument("--tls-key", help="client key (PEM), with --tls-cert")


def topics_for(site: str | None) -> list[str]:
    s = site or "+"
    if site is not None and (not site or any(c in site for c in "/+#\0")):
        raise ValueError(f"--site: must be a plain name without '/', '+', '#', got {site!r}")
    return [f"{TOPIC_ROOT}/{s}/+/{leaf}" for leaf in LEAVES]


MessageHandler = Callable[[mqtt.MQTTMessage, int], None]


class StationConnection:
    """A subscriber client: connects in the background, subscribes on every connect, reports refusals.

    ``on_message(msg, generation)`` runs on paho's thread; ``generation`` counts connections so a manual ack
    for a message from an earlier connection is never sent on a later one (the broker redelivers it instead).
    With ``persistent_session_s`` > 0 and a client id, the broker keeps the subscription and queues QoS 1
    messages while this client is away.
    """

    def __init__(self, options: BrokerOptions, topics: list[str], on_message: MessageHandler, *,
                 manual_ack: bool = False, persistent_session_s: int = 0) -> None:
        self.options = options
        self.topics = topics
        self._on_message = on_message
        self._persistent = persistent_session_s if options.client_id else 0
        self._password = read_password(options.password_file) if options.password_file else None
        self.connected = threading.Event()
        self.error: str | None = None
        self._failed = threading.Event()
        self.generation = 0
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=options.client_id or "",
                             protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        client.enable_logger(logging.getLogger(__name__ + ".paho"))
        if options.username:
            client.username_pw_set(options.username, self._password)
        if options.tls_ca is not None:
            client.tls_set(ca_certs=str(options.tls_ca),
                           certfile=None if options.tls_cert is None else str(options.tls_cert),
                           keyfile=None if options.tls_key is None else str(options.tls_key),
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._connected
        client.on_connect_fail = self._connect_failed
        client.on_disconnect = self._disconnected
        client.on_subscribe = self._subscribed
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


# ============================================================================================ watch
def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    add_broker_arguments(parser)
    g = parser.add_argument_group("display")
    g.add_argument("--stale-after", type=float, default=30.0, metavar="S",
                   help="a score older than S seconds is shown as stale (default: 30)")
    g.add_argument("--trend-window", type=float, default=300.0, metavar="S",
                   help="trend arrow from the NIPS slope over the last S seconds (default: 300)")
    g.add_argument("--refresh", type=float, default=1.0, metavar="S", help="redraw every S seconds (default: 1)")
    g.add_argument("--once", type=float, metavar="S",
                   help="print the table once after listening S seconds, then exit (for logs and tests)")
    g.add_argument("--plain", action="store_true", help="no ANSI colours or screen redraw")
    g.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="give up when the broker does not accept us within S seconds (default: 10)")


def run_watch(args: argparse.Namespace, *, out: Any = None) -> int:
    """``neopain watch``: returns 0, or 2 with one error line when the broker cannot be used."""
    out = out or sys.stdout
    for name in ("stale_after", "trend_window", "refresh", "connect_timeout"):
        if not getattr(args, name) > 0:
            print(f"neopain watch: --{name.replace('_', '-')} must be > 0", file=sys.stderr)
            return 2
    try:
        options = BrokerOptions.from_args(args)
        topics = topics_for(args.site)
        board = Board()
        conn = StationConnection(options, topics, lambda msg, gen: board.ingest(
            msg.topic, bytes(msg.payload), datetime.now(timezone.utc)))
    except (ValueError, OSError) as exc:
        print(f"neopain watch: {exc}", file=sys.stderr)
        return 2
    conn.start()
    try:
        conn.wait_ready(args.connect_timeout)
    except ConnectionError as exc:
        print(f"neopain watch: {exc}", file=sys.stderr)
        conn.stop()
        return 2

    def draw(color: bool) -> str:
        title = "neopain watch" + ("" if conn.connected.is_set() else f"  [NOT CONNECTED: {conn.error or 'reconnecting'}]")
        return render_table(board.snapshot(), now=datetime.now(timezone.utc), stale_after_s=args.stale_after,
                            trend_window_s=args.trend_window, color=color, title=title)

    try:
        if args.once is not None:
            time.sleep(max(0.0, args.once))
            out.write(draw(color=False))
            out.flush()
            return 0
        while True:
            text = draw(color=not args.plain)
            out.write(text + "\n" if args.plain else "\x1b[H\x1b[2J" + text)
            out.flush()
            time.sleep(args.refresh)
    except KeyboardInterrupt:
        return 0
    finally:
        conn.stop()


# ============================================================================================ bridge
@dataclass
class BridgeStats:
    received: int = 0
    delivered: int = 0
    duplicates: int = 0
    invalid: int = 0
    fhir_sent: int = 0
    fhir_failed: int = 0
    mllp_sent: int = 0
    mllp_failed: int = 0
    retries: int = 0


class Bridge:
    """Turns score messages into hospital messages, once per message id.

    ``fhir_sink`` is a ``fhir.FhirFileSink`` or ``fhir.FhirHttpSink``; ``mllp`` an ``hl7.MllpClient``. For each
    sink a retryable failure (network, 5xx, timeout) is retried with backoff until it succeeds or the bridge
    stops (then the message stays unacknowledged and the broker redelivers it); a permanent one (4xx, NAK) is
    counted and logged, because resending the same content cannot help. ``handle`` returns True when the
    message is finished with (delivered, duplicate, invalid or permanently refused) and may be acknowledged.
    """

    def __init__(self, *, fhir_sink: Any = None, mllp: hl7.MllpClient | None = None, dedup_size: int = 100_000,
                 hl7_options: Mapping[str, Any] | None = None, retry_min_s: float = 0.5,
                 retry_max_s: float = 30.0) -> None:
        if fhir_sink is None and mllp is None:
            raise ValueError("bridge: give at least one of --fhir-out, --fhir-url, --mllp")
        self.fhir_sink = fhir_sink
        self.mllp = mllp
        self.hl7_options = dict(hl7_options or {})
        self.stats = BridgeStats()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedup_size = dedup_size
        self._retry = (retry_min_s, retry_max_s)
        self.stopping = threading.Event()

    def seen(self, message_id: str) -> bool:
        return message_id in self._seen

    def handle(self, topic: str, payload: bytes) -> bool:
        parsed = parse_topic(topic)
        if parsed is None or parsed[2] != "score":
            return True
        site, bed, _ = parsed
        self.stats.received += 1
        try:
            score = json.loads(payload)
            if not isinstance(score, dict):
                raise ValueError("score: not a JSON object")
            mid = score.get("message_id")
            if not isinstance(mid, str) or not mid:
                raise ValueError("score.message_id: missing")
            if mid in self._seen:
                self.stats.duplicates += 1
                return True
            obs = fhir.score_to_observation(score, site=site, bed=bed) if self.fhir_sink is not None else None
            if obs is not None:
                problems = fhir.validate_observation(obs)
                if problems:
                    raise ValueError("FHIR Observation invalid: " + "; ".join(problems))
            oru = hl7.build_oru_r01(score, site=site, bed=bed, **self.hl7_options) if self.mllp is not None else None
        except (ValueError, UnicodeDecodeError) as exc:
            self.stats.invalid += 1
            log.warning("bridge: invalid score on %s: %s", topic, exc)
            return True
        if obs is not None and not self._deliver("fhir", lambda: self.fhir_sink.send(obs), mid):
            return False
        if oru is not None and not self._deliver("mllp", lambda: self.mllp.send(oru), mid):  # type: ignore[union-attr]
            return False
        self._seen[mid] = None
        while len(self._seen) > self._dedup_size:
            self._seen.popitem(last=False)
        self.stats.delivered += 1
        return True

    def _deliver(self, sink: str, send: Callable[[], Any], mid: str) -> bool:
        """True when done (sent or permanently refused); False only when stopping before success."""
        delay = self._retry[0]
        while True:
            try:
                send()
                setattr(self.stats, f"{sink}_sent", getattr(self.stats, f"{sink}_sent") + 1)
                return True
            except (fhir.FhirHttpError, hl7.MllpError) as exc:
                if not exc.retry:
                    setattr(self.stats, f"{sink}_failed", getattr(self.stats, f"{sink}_failed") + 1)
                    log.error("bridge: %s refused %s for good: %s", sink, mid, exc)
                    return True
                log.warning("bridge: %s failed for %s, retrying in %.1fs: %s", sink, mid, delay, exc)
            except OSError as exc:  # a file sink: disk full, permissions; worth another try
                log.warning("bridge: %s failed for %s, retrying in %.1fs: %s", sink, mid, delay, exc)
            self.stats.retries += 1
            if self.stopping.wait(delay):
                return False
            delay = min(delay * 2, self._retry[1])


class BridgeService:
    """A ``Bridge`` fed from the broker: paho's thread queues, one worker delivers in order and then acks."""

    def __init__(self, bridge: Bridge, options: BrokerOptions, *, site: str | None = None,
                 persistent_session_s: int = 3600) -> None:
        self.bridge = bridge
        self._queue: "queue.Queue[tuple[mqtt.MQTTMessage, int] | None]" = queue.Queue()
        self.connection = StationConnection(options, [t for t in topics_for(site) if t.endswith("/score")],
                                            lambda msg, gen: self._queue.put((msg, gen)), manual_ack=True,
                                            persistent_session_s=persistent_session_s)
        self._worker = threading.Thread(target=self._work, name="bridge-worker", daemon=True)

    def start(self, connect_timeout_s: float = 10.0) -> None:
        self._worker.start()
        self.connection.start()
        self.connection.wait_ready(connect_timeout_s)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            msg, gen = item
            try:
                done = self.bridge.handle(msg.topic, bytes(msg.payload))
            except Exception:  # noqa: BLE001 - a bug for one message must not stop the bridge; not acked
                log.exception("bridge: unexpected error on %s", msg.topic)
                continue
            if done and msg.qos > 0:
                self.connection.ack(msg.mid, msg.qos, gen)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.bridge.stopping.set()
        self._queue.put(None)
        self._worker.join(timeout_s)
        self.connection.stop()
        if self.bridge.mllp is not None:
            self.bridge.mllp.close()


def add_bridge_arguments(parser: argparse.ArgumentParser) -> None:
    add_broker_arguments(parser)
    parser.add_argument("--client-id", help="MQTT client id; enables a persistent session so scores published "
                                            "while the bridge is down are delivered when it returns")
    g = parser.add_argument_group("outputs (at least one)")
    g.add_argument("--fhir-out", metavar="DIR", help="write each Observation to DIR/Observation-<id>.json")
    g.add_argument("--fhir-url", metavar="URL", help="POST each Observation to URL (FHIR base) as conditional create")
    g.add_argument("--fhir-token-file", metavar="FILE", help="bearer token for --fhir-url (first line of FILE)")
    g.add_argument("--mllp", metavar="HOST:PORT", help="send IHE PCD-01 ORU^R01 over MLLP to HOST:PORT")
    g.add_argument("--receiving-application", default="", help="MSH-5 of the HL7 messages")
    g.add_argument("--receiving-facility", default="", help="MSH-6 of the HL7 messages")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: run until killed)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="give up when the broker does not accept us within S seconds (default: 10)")


def _bridge_from_args(args: argparse.Namespace) -> Bridge:
    if args.fhir_out and args.fhir_url:
        raise ValueError("--fhir-out and --fhir-url: give one of them")
    sink: Any = None
    if args.fhir_out:
        sink = fhir.FhirFileSink(Path(args.fhir_out))
    elif args.fhir_url:
        token = read_password(Path(args.fhir_token_file)) if args.fhir_token_file else None
        sink = fhir.FhirHttpSink(args.fhir_url, bearer_token=token)
    mllp = None
    if args.mllp:
        host, port = hl7.parse_host_port(args.mllp)
        mllp = hl7.MllpClient(host, port)
    return Bridge(fhir_sink=sink, mllp=mllp, hl7_options={"receiving_application": args.receiving_application,
                                                          "receiving_facility": args.receiving_facility})


def run_bridge(args: argparse.Namespace) -> int:
    """``neopain bridge``: runs until SIGTERM/SIGINT or ``--duration``; prints a one-line summary at the end."""
    try:
        bridge = _bridge_from_args(args)
        service = BridgeService(bridge, BrokerOptions.from_args(args), site=args.site)
    except (ValueError, OSError) as exc:
        print(f"neopain bridge: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        service.start(args.connect_timeout)
    except ConnectionError as exc:
        print(f"neopain bridge: {exc}", file=sys.stderr)
        service.stop()
        return 2
    try:
        done.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    s = bridge.stats
    print(f"neopain bridge: received {s.received}, delivered {s.delivered}, duplicates {s.duplicates}, "
          f"invalid {s.invalid}, fhir sent {s.fhir_sent} failed {s.fhir_failed}, "
          f"mllp sent {s.mllp_sent} failed {s.mllp_failed}, retries {s.retries}")
    return 0
