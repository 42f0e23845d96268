"""MQTT publisher of the appliance: scores through a disk outbox, availability, health, vitals, commands.

Topics under the bed's prefix ``neopain/<site>/<bed>/`` (vocabulary in ``appliance.mqtt.topics``):

- ``score``   QoS ``[mqtt] qos`` (1 or 2), MQTT 5 message expiry; every score goes through the ``Outbox``
  (written before it is published, deleted when the broker has it -- PUBACK at QoS 1, PUBCOMP at QoS 2 --
  replayed oldest first on every (re)connect, in this process or the next).
- ``status``  retained ``online`` / ``offline`` (plain text). ``offline`` is the last will (QoS 1, retained), so
  a crashed or unplugged device reads offline; a clean ``stop()`` publishes it explicitly before disconnecting.
- ``health``  retained JSON, every ``health_interval_s`` and on each connect; content from a callback plus the
  publisher's own outbox figures.
- ``vitals``  optional, QoS 0, best effort (dropped and counted while disconnected).
- ``cmd/#``   subscribed; ``cmd/<name>`` with a JSON object payload is handed to a callback; malformed JSON or
  an unknown name is logged and counted, never raised.
- ``confirm/+`` subscribed; what each station has stored, for ``confirmations.ConfirmationTracker`` (health's
  ``confirmations``: scores the broker took that no station confirmed after ``confirm_grace_s``).

Threads: the caller (scoring loop) only writes to the outbox and sets an event — it never waits on the
network. One pump thread owns every ``client.publish`` and the map from MQTT packet ids to outbox rows; paho's
network thread (``loop_start``) only records facts (connected, refused, PUBACK mid) and wakes the pump. That
avoids taking our lock inside paho callbacks, which paho runs while holding its own message mutex.

Replay order and expiry: paho would resend its own in-memory in-flight copies after a reconnect, with their
original expiry and ahead of older rows from a previous process. On each connect we discard those copies and
replay from the outbox instead, so the outbox is the single source of truth (order, expiry, bound).
"""
from __future__ import annotations

import logging
import math
import queue
import sqlite3
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance import clock
from appliance.config import default

from appliance.mqtt import messages, topics
from appliance.mqtt.client import make_client, read_password
from appliance.mqtt.confirmations import ConfirmationTracker
from appliance.mqtt.outbox import Outbox, OutboxStats
from appliance.textcut import cut

log = logging.getLogger(__name__)

HealthProvider = Callable[[], Mapping[str, Any]]
CommandHandler = Callable[[messages.Command], None]


class ConnectionState(str, Enum):
    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"  # was connected; paho is reconnecting with backoff
    REFUSED = "refused"  # broker answered CONNACK with a failure (bad credentials, not authorised, ...)
    FAILED = "failed"  # TCP or TLS could not be established (unreachable, certificate rejected, ...)

    @property
    def is_error(self) -> bool:
        return self in (ConnectionState.REFUSED, ConnectionState.FAILED)


@dataclass(frozen=True)
class PublisherConfig:
    """Everything the publisher needs; ``appliance.config`` maps the TOML ``[mqtt]`` table onto it.

    Secrets are paths: ``password_file`` (first line is the password) and ``tls_key``; the password text never
    appears in the configuration itself.
    """

    host: str
    site: str
    bed: str
    device_id: str
    outbox_path: Path
    port: int = default("mqtt", "port")
    client_id: str | None = None
    keepalive_s: int = default("mqtt", "keepalive_s")
    username: str | None = None
    password_file: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    score_expiry_s: float = default("mqtt", "message_expiry_s")
    health_interval_s: float = default("mqtt", "health_interval_s")
    outbox_max_rows: int = default("outbox", "max_rows")
    inflight_window: int = 20
    qos: int = default("mqtt", "qos")  # of scores: 1 (PUBACK releases the outbox row) or 2 (PUBCOMP does)
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30
    publish_vitals: bool = default("mqtt", "publish_vitals")
    known_commands: frozenset[str] = field(default_factory=lambda: messages.KNOWN_COMMANDS)
    command_key: bytes | None = field(default=None, repr=False)  # station HMAC key (config.command_key)
    confirm_grace_s: float = default("mqtt", "confirm_grace_s")  # unconfirmed by any station after this long

    def __post_init__(self) -> None:
        topics.check_level("mqtt.site", self.site)
        topics.check_level("mqtt.bed", self.bed)
        if not self.device_id:
            raise ValueError("mqtt.device_id: must not be empty")
        if not self.host:
            raise ValueError("mqtt.host: must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"mqtt.port: {self.port} is not a TCP port")
        if not self.score_expiry_s > 0:
            raise ValueError(f"mqtt.score_expiry_s: must be > 0, got {self.score_expiry_s}")
        if not self.health_interval_s > 0:
            raise ValueError(f"mqtt.health_interval_s: must be > 0, got {self.health_interval_s}")
        if not (math.isfinite(self.confirm_grace_s) and self.confirm_grace_s > 0):
            raise ValueError(f"mqtt.confirm_grace_s: must be a finite number > 0, got {self.confirm_grace_s}")
        if self.qos not in (1, 2):
            raise ValueError(f"mqtt.qos: must be 1 or 2 (the outbox waits for the broker), got {self.qos!r}")
        if self.inflight_window < 1:
            raise ValueError(f"mqtt.inflight_window: must be >= 1, got {self.inflight_window}")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("mqtt.reconnect_min_s/reconnect_max_s: need 0 < min <= max")
        if self.password_file is not None and not self.username:
            raise ValueError("mqtt.password_file: given without mqtt.username")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("mqtt.tls_cert/tls_key: give both (client certificate) or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("mqtt.tls_cert: a client certificate needs mqtt.tls_ca (TLS)")

    @property
    def prefix(self) -> str:
        return topics.bed_prefix(self.site, self.bed)

    def topic(self, leaf: str) -> str:
        return topics.topic(self.prefix, leaf)


@dataclass
class PublisherStats:
    state: ConnectionState
    last_error: str | None
    connects: int = 0
    scores_queued: int = 0
    scores_sent: int = 0
    scores_acked: int = 0
    scores_rejected: int = 0
    vitals_sent: int = 0
    vitals_dropped: int = 0
    health_sent: int = 0
    health_errors: int = 0
    commands_ok: int = 0
    commands_malformed: int = 0
    commands_unknown: int = 0
    commands_failed: int = 0
    outbox_depth: int = 0
    outbox_dropped_overflow: int = 0
    outbox_dropped_expired: int = 0
    network_errors: int = 0  # exceptions paho's network loop raised (logged; the loop was re-entered)


class Publisher:
    """Owns the broker connection. ``start()``, then ``publish_score(...)`` from the scoring loop; ``stop()``.

    ``health_provider()`` runs on the pump thread and returns ``messages.build_health`` keyword arguments
    (``sources``, ``fps``, ``engine_backend``, optionally ``state``/``detail``); the publisher adds the outbox
    figures and the last score age. ``on_command(command)`` runs on paho's network thread: it must only hand
    the command over (e.g. to a queue), not work on it.
    """

    def __init__(
        self,
        config: PublisherConfig,
        *,
        health_provider: HealthProvider | None = None,
        on_command: CommandHandler | None = None,
    ) -> None:
        self.config = config
        self.outbox = Outbox(config.outbox_path, max_rows=config.outbox_max_rows)
        self._health_provider = health_provider
        self._on_command = on_command
        # Size, JSON, envelope, target bed, freshness and replay checks of every command (see messages.py).
        self._command_guard = messages.CommandGuard(bed=config.bed, known=config.known_commands,
                                                    key=config.command_key)
        self.confirmations = ConfirmationTracker(device_id=config.device_id, prefix=config.prefix,
                                                 grace_s=config.confirm_grace_s)
        self._password = read_password(config.password_file) if config.password_file else None
        for name in ("tls_ca", "tls_cert", "tls_key"):
            p = getattr(config, name)
            if p is not None and not Path(p).is_file():
                raise OSError(f"mqtt.{name} {p}: no such file")

        self._stats = PublisherStats(state=ConnectionState.STOPPED, last_error=None)
        self._stats_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._acks: "queue.SimpleQueue[tuple[int, int, bool, str]]" = queue.SimpleQueue()
        self._vitals: deque[bytes] = deque(maxlen=10)
        self._generation = 0  # bumped by on_connect (paho thread), read by the pump
        self._health_now = threading.Event()
        self._last_score_ns: int | None = None
        self._last_outbox_stats: OutboxStats | None = None
        self._client: mqtt.Client | None = None
        self._pump_thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- public API
    @property
    def state(self) -> ConnectionState:
        return self._stats.state

    @property
    def last_error(self) -> str | None:
        return self._stats.last_error

    def stats(self) -> PublisherStats:
        o = self.outbox.stats()
        with self._stats_lock:
            s = PublisherStats(**vars(self._stats))
        s.outbox_depth, s.outbox_dropped_overflow, s.outbox_dropped_expired = o.depth, o.dropped_overflow, o.dropped_expired
        return s

    def start(self) -> None:
        """Connect in the background (never raises for network reasons: watch ``state`` / ``last_error``)."""
        if self._client is not None:
            raise RuntimeError("publisher already started")
        cfg = self.config
        client = make_client(client_id=cfg.client_id or f"neopain-{cfg.device_id}", logger_name=__name__ + ".paho",
                             username=cfg.username, password=self._password, tls_ca=cfg.tls_ca,
                             tls_cert=cfg.tls_cert, tls_key=cfg.tls_key)
        client.will_set(cfg.topic(topics.STATUS), messages.STATUS_OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=cfg.reconnect_min_s, max_delay=cfg.reconnect_max_s)
        client.max_inflight_messages_set(cfg.inflight_window + 5)  # headroom for status/health
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_loop_error = self._on_loop_error
        client.loop_retry_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self._client = client
        self._set_state(ConnectionState.CONNECTING, None)
        client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=True)
        client.loop_start()
        self._pump_thread = threading.Thread(target=self._pump_main, name="mqtt-pump", daemon=True)
        self._pump_thread.start()

    def publish_score(self, **fields: Any) -> dict[str, Any]:
        """Build, store durably and queue one score; returns the message. Never waits on the network.

        ``fields`` are ``messages.build_score`` arguments except ``device_id`` and ``sequence``, which the
        publisher fills (sequence from the outbox's durable counter). Works before ``start()`` too: the score
        waits in the outbox.
        """
        built: dict[str, Any] = {}

        def build(sequence: int) -> tuple[bytes, str]:
            built.update(messages.build_score(device_id=self.config.device_id, sequence=sequence, **fields))
            return messages.encode(built), built["message_id"]

        # Sequence reserved and row written in one durable transaction (one fsync; a refused score uses none).
        self.outbox.put_sequenced(self.config.topic(topics.SCORE), build, expiry_s=self.config.score_expiry_s)
        self._last_score_ns = clock.now_ns()
        with self._stats_lock:
            self._stats.scores_queued += 1
        self._wake.set()
        return built

    def publish_vitals(self, *, t_mono_ns: int, hr_bpm: float | None, spo2_pct: float | None,
                       source: str | None = None) -> None:
        """Queue one vitals reading (best effort, QoS 0; dropped and counted while not connected)."""
        if not self.config.publish_vitals:
            return
        msg = messages.build_vitals(device_id=self.config.device_id, t_mono_ns=t_mono_ns, hr_bpm=hr_bpm,
                                    spo2_pct=spo2_pct, source=source)
        if self.state is not ConnectionState.CONNECTED:
            with self._stats_lock:
                self._stats.vitals_dropped += 1
            return
        if len(self._vitals) == self._vitals.maxlen:
            with self._stats_lock:
                self._stats.vitals_dropped += 1
        self._vitals.append(messages.encode(msg))
        self._wake.set()

    def request_health(self) -> None:
        """Publish a health message at the next pump turn (e.g. when a source goes down)."""
        self._health_now.set()
        self._wake.set()

    def wait_for(self, predicate: Callable[["Publisher"], bool], timeout: float) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout`` s pass (for start-up checks and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self, timeout: float = 3.0) -> None:
        """Clean shutdown: publish ``offline`` explicitly (a clean DISCONNECT suppresses the will), then go.

        Rows still in the outbox stay there and are replayed by the next start.
        """
        client = self._client
        self._stopping.set()
        self._wake.set()
        if self._pump_thread is not None:
            self._pump_thread.join(timeout)
        if client is not None:
            if self.state is ConnectionState.CONNECTED:
                info = client.publish(self.config.topic(topics.STATUS), messages.STATUS_OFFLINE, qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:
                    log.warning("mqtt: offline status not confirmed: %s", exc)
            client.disconnect()
            client.loop_stop()
        self._client = None
        self._set_state(ConnectionState.STOPPED, None)
        self.outbox.close()

    # ------------------------------------------------------------------------------ paho callbacks
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                    properties: Any) -> None:
        if reason_code.is_failure:
            self._set_state(ConnectionState.REFUSED, f"broker refused connection: {reason_code}")
            log.error("mqtt: %s:%s refused the connection: %s", self.config.host, self.config.port, reason_code)
            return
        self._discard_paho_inflight(client)
        client.subscribe([(self.config.topic(f"{topics.CMD}/#"), 1), (topics.confirm_filter(self.config.prefix), 1)])
        client.publish(self.config.topic(topics.STATUS), messages.STATUS_ONLINE, qos=1, retain=True)
        self._generation += 1
        with self._stats_lock:
            self._stats.connects += 1
        self._set_state(ConnectionState.CONNECTED, None)
        log.info("mqtt: connected to %s:%s", self.config.host, self.config.port)
        self._health_now.set()
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError`` block: the exception is the one being handled.
        exc = sys.exc_info()[1]
        text = f"{type(exc).__name__}: {exc}" if exc else "connection failed"
        self._set_state(ConnectionState.FAILED, f"cannot connect to {self.config.host}:{self.config.port}: {text}")
        log.error("mqtt: cannot connect to %s:%s: %s", self.config.host, self.config.port, text)

    def _on_loop_error(self, exc: BaseException, retry_in_s: float) -> None:
        # Runs on the network thread after the client logged it: record why we are (or may be) not connected.
        with self._stats_lock:
            self._stats.network_errors += 1
        text = (f"mqtt network loop failed for {cut(self.config.host)}:{self.config.port}: {type(exc).__name__}: "
                f"{exc}; retrying in {retry_in_s:g} s")
        client = self._client
        if client is not None and client.is_connected():  # the client reconnects after the pause
            self._set_state(ConnectionState.DISCONNECTED, text)
        else:
            self._set_state(ConnectionState.FAILED, text)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: ReasonCode,
                       properties: Any) -> None:
        if self._stopping.is_set():
            return
        # After a refused CONNACK paho also reports a disconnect: keep the (more useful) refusal state.
        if self.state is ConnectionState.CONNECTED:
            self._set_state(ConnectionState.DISCONNECTED, f"connection lost: {reason_code}")
            log.warning("mqtt: connection lost (%s); reconnecting", reason_code)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        # Runs under paho's message mutex: record and wake, nothing else.
        self._acks.put((self._generation, mid, bool(reason_code.is_failure), str(reason_code)))
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self.confirmations.owns(msg.topic):
            self.confirmations.receive(msg.topic, msg.payload)  # never raises
            return
        prefix = self.config.topic(f"{topics.CMD}/")
        name = msg.topic[len(prefix):] if msg.topic.startswith(prefix) else ""
        try:
            command = self._command_guard.check(name, msg.payload, topic=msg.topic)
        except messages.CommandError as exc:
            counter = "commands_unknown" if exc.kind == "unknown" else "commands_malformed"
            with self._stats_lock:
                setattr(self._stats, counter, getattr(self._stats, counter) + 1)
            log.warning("mqtt: ignored command on %s: %s", cut(msg.topic), exc)
            return
        with self._stats_lock:
            self._stats.commands_ok += 1
        if command.name == "health/request":
            self.request_health()
        if self._on_command is None:
            return
        try:
            self._on_command(command)
        except Exception:  # a bad handler must not kill paho's network thread
            with self._stats_lock:
                self._stats.commands_failed += 1
            log.exception("mqtt: command handler failed for %s", command.name)

    # ------------------------------------------------------------------------------------ the pump
    def _pump_main(self) -> None:
        inflight: dict[tuple[int, int], int] = {}  # (generation, mid) -> outbox row id
        cursor = 0  # highest outbox row handed to paho on the current connection
        seen_generation = 0
        next_health = 0.0
        while not self._stopping.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            try:
                self._drain_acks(inflight)
                if self._stopping.is_set():
                    break
                if self.state is not ConnectionState.CONNECTED:
                    continue
                generation = self._generation
                if generation != seen_generation:
                    seen_generation, cursor = generation, 0
                    inflight = {k: v for k, v in inflight.items() if k[0] == generation}
                cursor = self._pump_scores(generation, inflight, cursor)
                self._pump_vitals()
                if self._health_now.is_set() or time.monotonic() >= next_health:
                    self._health_now.clear()
                    self._publish_health()
                    next_health = time.monotonic() + self.config.health_interval_s
            except Exception:  # keep pumping: a transient sqlite/paho error must not stop delivery
                log.exception("mqtt: publisher pump error")
                time.sleep(0.2)

    def _drain_acks(self, inflight: dict[tuple[int, int], int]) -> None:
        while True:
            try:
                generation, mid, failed, reason = self._acks.get_nowait()
            except queue.Empty:
                return
            row_id = inflight.pop((generation, mid), None)
            if row_id is None:
                continue  # status/health ack, or a copy from an older connection
            # A refused PUBACK (e.g. not authorised by ACL) would be refused again on every replay: drop it loudly.
            self.outbox.ack(row_id)
            if not failed:
                self.confirmations.acked_row(row_id)
            with self._stats_lock:
                if failed:
                    self._stats.scores_rejected += 1
                else:
                    self._stats.scores_acked += 1
            if failed:
                log.error("mqtt: broker rejected score row %d: %s", row_id, reason)
            self._wake.set()  # room in the window: send more

    def _pump_scores(self, generation: int, inflight: dict[tuple[int, int], int], cursor: int) -> int:
        assert self._client is not None
        room = self.config.inflight_window - len(inflight)
        if room <= 0:
            return cursor
        for entry in self.outbox.pending(after_id=cursor, limit=room):
            props = Properties(PacketTypes.PUBLISH)
            if entry.remaining_s is not None:
                props.MessageExpiryInterval = max(1, math.ceil(entry.remaining_s))
            info = self._client.publish(entry.topic, entry.payload, qos=self.config.qos, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                # Lost the connection meanwhile: paho's copy is discarded on reconnect, the row replays.
                return cursor
            inflight[(generation, info.mid)] = entry.row_id
            self.confirmations.sending(entry.row_id, entry.payload)
            cursor = entry.row_id
            with self._stats_lock:
                self._stats.scores_sent += 1
        return cursor

    def _pump_vitals(self) -> None:
        assert self._client is not None
        while self._vitals:
            payload = self._vitals.popleft()
            info = self._client.publish(self.config.topic(topics.VITALS), payload, qos=0)
            with self._stats_lock:
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    self._stats.vitals_sent += 1
                else:
                    self._stats.vitals_dropped += 1

    def _publish_health(self) -> None:
        assert self._client is not None
        outbox_error = None
        try:
            o = self._last_outbox_stats = self.outbox.stats()
        except (sqlite3.Error, OSError) as exc:  # an outbox that cannot be read must not silence health too
            o = self._last_outbox_stats or OutboxStats(0, 0, 0, None)
            outbox_error = f"outbox unreadable: {exc}"[:300]
        fields: dict[str, Any] = {"sources": {}}
        if self._health_provider is not None:
            try:
                fields.update(self._health_provider())
            except Exception as exc:
                with self._stats_lock:
                    self._stats.health_errors += 1
                log.exception("mqtt: health provider failed")
                fields = {"sources": {}, "state": "no_score", "detail": f"health provider failed: {exc}"}
        if outbox_error is not None:  # the file named first, figures as last read
            fields["detail"] = "; ".join(x for x in (outbox_error, fields.get("detail")) if x)[:500]
            if fields.get("state", "ok") == "ok":
                fields["state"] = "degraded"
        try:
            msg = messages.build_health(
                device_id=self.config.device_id,
                outbox_depth=o.depth,
                outbox_dropped_overflow=o.dropped_overflow,
                outbox_dropped_expired=o.dropped_expired,
                last_score_age_s=clock.age_s(self._last_score_ns),
                confirmations=self.confirmations.health(),
                **fields,
            )
        except (TypeError, ValueError) as exc:
            with self._stats_lock:
                self._stats.health_errors += 1
            log.error("mqtt: health provider returned an invalid health message: %s", exc)
            return
        info = self._client.publish(self.config.topic(topics.HEALTH), messages.encode(msg), qos=1, retain=True)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._stats_lock:
                self._stats.health_sent += 1

    # ------------------------------------------------------------------------------------ internals
    def _set_state(self, state: ConnectionState, error: str | None) -> None:
        with self._stats_lock:
            self._stats.state = state
            if error is not None or state is ConnectionState.CONNECTED:
                self._stats.last_error = error

    @staticmethod
    def _discard_paho_inflight(client: mqtt.Client) -> None:
        """Drop paho's in-memory copies of messages sent on the previous connection (see module docstring).

        Uses paho 2.x internals (``_out_messages`` under ``_out_message_mutex``); if they change, paho resends
        its copies as well and consumers see duplicates, which the message id de-duplicates — never a loss.
        """
        mutex = getattr(client, "_out_message_mutex", None)
        pending = getattr(client, "_out_messages", None)
        if mutex is None or pending is None:
            return
        with mutex:
            pending.clear()
            if hasattr(client, "_inflight_messages"):
                client._inflight_messages = 0
