"""From the broker into the station: the board in memory, the history on disk, then the pages and the devices.

Order matters, and is the point of this module. paho's thread puts each message on the ``Board`` (which
checks it) and queues it; one writer thread stores what is queued in one SQLite transaction (group commit:
whatever arrived while the last commit ran goes into the next, so the batch grows with the load and a lone
score is written at once). Only after the commit does it

1. acknowledge the messages to the broker (manual acks: with a persistent session, a score the station had
   not stored when it stopped is delivered again when it returns: the history loses nothing),
2. confirm the stored scores to their devices (``station.confirm.Confirmer``: "stored" means on disk), and
3. tell the open pages (``live.Hub``), so a page never shows a score the station could still lose.

Health, status and calibration changes are stored as events (only changes, not every retained repeat), which
the bed page draws on the same time axis as the scores.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from appliance.isotime import parse_utc
from appliance.mqtt import messages, topics
from appliance.station.board import Board, BedState
from appliance.station.confirm import Confirmer
from appliance.station.web.history import Event, HistoryStore, ScoreRow
from appliance.station.web.live import Hub
from appliance.station.web.view import PatientView, bed_key, bed_view

log = logging.getLogger(__name__)

#: Messages waiting for the writer before paho's thread is made to wait (the broker then holds the rest).
QUEUE_LIMIT = 50_000
#: Largest batch per transaction.
MAX_BATCH = 2000
#: Run the retention clean-up this often (seconds).
PRUNE_EVERY_S = 300.0

Ack = Callable[[int, int, int], bool]
PatientLookup = Callable[[], dict[str, PatientView]]


@dataclass(frozen=True)
class _Item:
    kind: str  # board.ingest's answer: score, duplicate, status, health, invalid, ignored
    site: str | None
    bed: str | None
    payload: bytes
    received: datetime
    mid: int
    qos: int
    generation: int


def score_row(site: str, bed: str, payload: bytes, received: datetime) -> ScoreRow:
    """The stored form of a score the board accepted (so its fields are checked already)."""
    msg = json.loads(payload)
    used = tuple(m for m in messages.MODALITIES
                 if isinstance((msg.get("modalities") or {}).get(m), dict) and msg["modalities"][m].get("used") is True)
    items = msg.get("nips_items")
    created = msg.get("created_utc")
    conf, seq, device = msg.get("confidence"), msg.get("sequence"), msg.get("device_id")
    return ScoreRow(
        message_id=msg["message_id"], site=site, bed=bed,
        device_id=device if isinstance(device, str) and device else None,
        sequence=seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None,
        t=parse_utc(msg["window"]["end_utc"], "score.window.end_utc").timestamp(),
        received=received.timestamp(),
        created=_epoch(created, "score.created_utc"),
        nips=float(msg["nips"]), intensity=float(msg["intensity"]),
        confidence=float(conf) if isinstance(conf, (int, float)) and not isinstance(conf, bool) else None,
        items={k: float(v) for k, v in items.items() if k in messages.NIPS_ITEMS and isinstance(v, (int, float))}
        if isinstance(items, dict) else None,
        modalities=used,
        calibration=_short(msg.get("calibration_version")), model=_short(msg.get("model_version")))


def _epoch(value: Any, name: str) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_utc(value, name).timestamp()
    except ValueError:
        return None


def _short(value: Any) -> str | None:
    return value[:200] if isinstance(value, str) and value else None


def seed_payload(row: ScoreRow) -> bytes:
    """A stored score as the minimal score message the board reads (for the board after a restart)."""
    end = datetime.fromtimestamp(row.t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"type": "score", "message_id": row.message_id, "nips": row.nips, "intensity": row.intensity,
                       "window": {"end_utc": end}, "confidence": row.confidence, "device_id": row.device_id,
                       "sequence": row.sequence,
                       "modalities": {m: {"used": True} for m in row.modalities}}).encode("utf-8")


class Ingest:
    """Board + history + confirmations + live pages, fed by ``on_message`` (paho's thread)."""

    def __init__(self, board: Board, history: HistoryStore, hub: Hub, *, stale_after_s: float,
                 confirmer: Confirmer | None = None, ack: Ack | None = None,
                 patients: PatientLookup | None = None) -> None:
        self.board, self.history, self.hub = board, history, hub
        self.stale_after_s = stale_after_s
        self.confirmer = confirmer
        self._ack = ack
        self._patients = patients
        #: ``tile(view) -> html``: the page's rendering of a bed, sent with each live update (set by the app).
        self.tile: Callable[[dict[str, Any]], str] = lambda view: ""
        self._queue: "queue.Queue[_Item | None]" = queue.Queue(QUEUE_LIMIT)
        self._latest: dict[tuple[str, str], ScoreRow] = {}
        self._last_event: dict[tuple[str, str, str], tuple[str, str | None]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.write_errors = 0
        self.last_error: str | None = None

    # -------------------------------------------------------------------------------------- start, stop
    def seed(self) -> int:
        """Put each bed's newest stored score on the board and remember the last events (after a restart)."""
        rows = self.history.latest_scores()
        for row in rows:
            self.board.ingest(topics.topic(topics.bed_prefix(row.site, row.bed), topics.SCORE), seed_payload(row),
                              datetime.fromtimestamp(row.received, timezone.utc))
            self._latest[(row.site, row.bed)] = row
            if row.calibration:
                self._last_event[(row.site, row.bed, "calibration")] = (row.calibration, None)
        for e in self.history.last_events():
            if e.kind != "calibration":
                self._last_event[(e.site, e.bed, e.kind)] = (e.value, e.detail)
        return len(rows)

    def start(self) -> "Ingest":
        self._thread = threading.Thread(target=self._run, name="station-writer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store what is queued, then stop the writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            self._thread = None

    # ------------------------------------------------------------------------------------ paho's thread
    def on_message(self, msg: Any, generation: int) -> None:
        received = datetime.now(timezone.utc)
        payload = bytes(msg.payload)
        kind = self.board.ingest(msg.topic, payload, received)
        parsed = topics.parse_topic(msg.topic)
        site, bed = (parsed[0], parsed[1]) if parsed else (None, None)
        self._queue.put(_Item(kind, site, bed, payload, received, msg.mid, msg.qos, generation))

    # ------------------------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        next_prune = time.monotonic() + 10.0
        while True:
            batch, stopping = self._take()
            if batch:
                self._store(batch)
            if stopping:
                return
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_S
                self._prune()

    def _take(self) -> tuple[list[_Item], bool]:
        """Everything queued (at most MAX_BATCH), waiting up to a second for the first; True: stop after it."""
        try:
            item = self._queue.get(timeout=1.0)
        except queue.Empty:
            return [], False
        batch: list[_Item] = []
        while item is not None:
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _store(self, batch: list[_Item]) -> None:
        scores: list[ScoreRow] = []
        events: list[Event] = []
        touched: set[tuple[str, str]] = set()
        for item in batch:
            if item.site is None or item.bed is None or item.kind in ("invalid", "ignored"):
                continue
            key = (item.site, item.bed)
            try:
                if item.kind in ("score", "duplicate"):
                    scores.append(score_row(item.site, item.bed, item.payload, item.received))
                elif item.kind in ("health", "status"):
                    event = self._change(item)
                    if event is not None:
                        events.append(event)
                    touched.add(key)
            except (ValueError, KeyError, TypeError) as exc:  # the board accepted it; this is a bug, logged
                log.warning("station: cannot store %s from %s/%s: %s", item.kind, item.site, item.bed, exc)
        for row in sorted(scores, key=lambda r: r.t):
            event = self._calibration_change(row)
            if event is not None:
                events.append(event)
        try:
            new = self.history.write(scores, events)
        except Exception as exc:  # noqa: BLE001 - not acked: the broker delivers them again after a reconnect
            self.write_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("station: history write failed (%d messages not acknowledged): %s", len(batch), exc)
            return
        for item in batch:
            if item.qos > 0 and self._ack is not None:
                self._ack(item.mid, item.qos, item.generation)
        new_ids = {r.message_id for r in new}
        for row in scores:
            key = (row.site, row.bed)
            touched.add(key)
            with self._lock:
                latest = self._latest.get(key)
                if latest is None or row.t >= latest.t:
                    self._latest[key] = row
            if self.confirmer is not None and row.device_id is not None and row.sequence is not None:
                self.confirmer.stored(row.site, row.bed, row.device_id, row.sequence, new=row.message_id in new_ids)
        self.stored += len(new)
        self.last_error = None
        if touched:
            self.hub.publish(self._event(touched))

    def _change(self, item: _Item) -> Event | None:
        """A health or status message as an event, when it changed what the station knew of the bed."""
        assert item.site is not None and item.bed is not None
        t = item.received.timestamp()
        if item.kind == "status":
            value, detail = item.payload.decode("utf-8").strip(), None
        else:
            msg = json.loads(item.payload)
            value = str(msg.get("state", "unknown"))[:40]
            detail = str(msg["detail"])[:500] if msg.get("detail") else None
            # On the device's clock, like the scores' window ends on the same chart; never after its arrival.
            t = min(t, _epoch(msg.get("utc"), "health.utc") or t)
        key = (item.site, item.bed, item.kind)
        if self._last_event.get(key) == (value, detail):
            return None
        self._last_event[key] = (value, detail)
        return Event(item.site, item.bed, t, item.kind, value, detail)

    def _calibration_change(self, row: ScoreRow) -> Event | None:
        key = (row.site, row.bed, "calibration")
        latest = self._latest.get((row.site, row.bed))
        if not row.calibration or (latest is not None and row.t < latest.t):
            return None  # an old score replayed late says nothing about what is in force now
        before = self._last_event.get(key)
        self._last_event[key] = (row.calibration, None)
        if before is None or before[0] == row.calibration:
            return None  # the first one seen is no change (the tile says what is in force)
        return Event(row.site, row.bed, row.t, "calibration", row.calibration, f"was {before[0]}")

    def _prune(self) -> None:
        try:
            while self.history.prune() > 0:
                pass
        except Exception as exc:  # noqa: BLE001 - retention must not stop the station; tried again later
            log.error("station: history retention failed: %s", exc)

    # ----------------------------------------------------------------------------------------- views
    def _patients_now(self) -> dict[str, PatientView]:
        if self._patients is None:
            return {}
        try:
            return self._patients()
        except Exception as exc:  # noqa: BLE001 - a registry problem must not blank the board
            log.warning("station: patient registry unreadable: %s", exc)
            return {}

    def _view(self, state: BedState, now: datetime, patients: dict[str, PatientView]) -> dict[str, Any]:
        key = (state.site, state.bed)
        with self._lock:
            latest = self._latest.get(key)
        return bed_view(state, latest, now, stale_after_s=self.stale_after_s,
                        patient=patients.get(bed_key(state.site, state.bed)))

    def _event(self, touched: set[tuple[str, str]]) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        patients = self._patients_now()
        beds = {}
        for site, bed in touched:
            state = self.board.bed(site, bed)
            if state is not None:
                beds[bed_key(site, bed)] = self.live(self._view(state, now, patients))
        return {"type": "beds", "beds": beds, "sent_ms": int(time.time() * 1000)}

    def live(self, view: dict[str, Any]) -> dict[str, Any]:
        """A bed as a live update carries it: the data and the tile as the page renders it."""
        return {"view": view, "html": self.tile(view)}

    def views(self) -> list[dict[str, Any]]:
        """Every bed as the board shows it now, in board order."""
        now = datetime.now(timezone.utc)
        patients = self._patients_now()
        return [self._view(s, now, patients) for s in self.board.snapshot()]

    def view(self, site: str, bed: str) -> dict[str, Any] | None:
        state = self.board.bed(site, bed)
        if state is None:
            return None
        return self._view(state, datetime.now(timezone.utc), self._patients_now())
