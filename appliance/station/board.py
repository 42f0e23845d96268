"""What the central station knows about each bed: ``BedState`` per bed, kept by ``Board`` from broker messages.

``Board.ingest(topic, payload, now)`` is the only way in, so watch and tests feed it the same way: it checks
each message (a bad one is counted per bed and logged, never raised), drops duplicates by message id and
keeps each bed's scores in window order even when an outbox replay delivers an older score late.

Safety rule: the age of a score is the larger of "since its window ended" (device clock) and "since it
arrived" (station clock), so neither a slow device clock nor a late delivery can make an old score look
fresh; the table (``appliance.station.table``) shows a score older than its stale limit as *stale*, never as
a current value, and draws no trend from it.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping, Sequence

from appliance.isotime import parse_utc
from appliance.mqtt import messages, topics

log = logging.getLogger(__name__)

TREND_UP, TREND_DOWN, TREND_FLAT, TREND_NONE = "↑", "↓", "→", " "

#: Health grouping on the station (``health_view``): a state other than ok is an *alarm* only once it has lasted
#: this long, so a modality that comes and goes (a cry) -- even from a device that does not debounce its own
#: health (``[scoring] modality_lost_after_s``) -- is shown as changes counted, not as an alarm each time.
HEALTH_ALARM_AFTER_S = 60.0
#: Changes of a bed's health state are counted over this window (the "4x/10m" of the table).
HEALTH_CHANGES_WINDOW_S = 600.0
HEALTH_CHANGES_KEPT = 64


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
    device_id: str | None = None  # with ``sequence``: what the station confirms it stored (station.confirm)
    sequence: int | None = None


#: ``on_stored(site, bed, point, new)``: a score is on the board (``new`` False: a duplicate already there).
StoredHook = Callable[[str, str, ScorePoint, bool], None]


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
    #: (station time, new state) of each health state change, oldest first: what ``health_view`` groups.
    health_changes: deque[tuple[datetime, str]] = field(default_factory=lambda: deque(maxlen=HEALTH_CHANGES_KEPT))

    @property
    def key(self) -> tuple[str, str]:
        return (self.site, self.bed)

    @property
    def last(self) -> ScorePoint | None:
        return self.scores[-1] if self.scores else None


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
    device, seq = msg.get("device_id"), msg.get("sequence")
    return ScorePoint(message_id=mid, nips=values["nips"], intensity=values["intensity"], window_end=end,
                      received=received, modalities=used,
                      confidence=float(conf) if isinstance(conf, (int, float)) and not isinstance(conf, bool) else None,
                      device_id=device if isinstance(device, str) and device else None,
                      sequence=seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None)


class Board:
    """All beds seen on the broker. ``ingest`` runs on paho's thread, ``snapshot`` on the drawing thread.

    ``on_stored`` is told of every score once it is on the board (duplicates too), under the board's lock, so
    it must only record (watch hands it to ``station.confirm.Confirmer``).
    """

    def __init__(self, *, max_points: int = 512, on_stored: StoredHook | None = None) -> None:
        self._beds: dict[tuple[str, str], BedState] = {}
        self._seen: dict[tuple[str, str], OrderedDict[str, None]] = {}
        self._lock = threading.Lock()
        self._max_points = max_points
        self._on_stored = on_stored

    def ingest(self, topic: str, payload: bytes, received: datetime) -> str:
        """Apply one message; returns what it was: score, status, health, duplicate, invalid or ignored."""
        parsed = topics.parse_topic(topic)
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
        if leaf == topics.STATUS:
            text = payload.decode("utf-8").strip()
            if text not in (messages.STATUS_ONLINE, messages.STATUS_OFFLINE):
                raise ValueError(f"status: expected online/offline, got {text[:40]!r}")
            state.status, state.status_at = text, received
            return "status"
        if leaf == topics.HEALTH:
            msg = json.loads(payload)
            if not isinstance(msg, dict) or msg.get("type") != "health":
                raise ValueError("health: not a JSON object of type 'health'")
            new_state = str(msg.get("state", "?"))
            if not state.health_changes or state.health_changes[-1][1] != new_state:
                state.health_changes.append((received, new_state))
            state.health, state.health_at = msg, received
            return "health"
        point = parse_score_point(payload, received)
        seen = self._seen[state.key]
        if point.message_id in seen:
            state.duplicates += 1
            self._stored(state, point, new=False)
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
        self._stored(state, point, new=True)
        return "score"

    def _stored(self, state: BedState, point: ScorePoint, *, new: bool) -> None:
        if self._on_stored is None:
            return
        try:
            self._on_stored(state.site, state.bed, point, new)
        except Exception:  # noqa: BLE001 - confirming must never cost the board a score
            log.exception("watch: confirming %s/%s failed", state.site, state.bed)

    def snapshot(self) -> list[BedState]:
        """Copies of every bed, sorted by site then bed (natural order for numbered beds)."""
        with self._lock:
            beds = [_copy(b) for b in self._beds.values()]
        return sorted(beds, key=lambda b: (b.site, _natural(b.bed)))

    def bed(self, site: str, bed: str) -> BedState | None:
        """A copy of one bed, or None when never seen (the web station redraws only the beds that changed)."""
        with self._lock:
            state = self._beds.get((site, bed))
            return None if state is None else _copy(state)


def _copy(b: BedState) -> BedState:
    return BedState(b.site, b.bed, deque(b.scores, maxlen=b.scores.maxlen), b.status, b.status_at,
                    dict(b.health) if b.health else None, b.health_at, b.invalid, b.duplicates,
                    deque(b.health_changes, maxlen=b.health_changes.maxlen))


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def score_age_s(point: ScorePoint, now: datetime) -> float:
    """Age of a score: the larger of since-window-end (device clock) and since-arrival (station clock)."""
    return max(0.0, (now - point.window_end).total_seconds(), (now - point.received).total_seconds())


#: A score older than this (by ``score_age_s``) is shown as stale, never as a current value (watch, web station).
STALE_AFTER_S = 30.0


def is_stale(point: ScorePoint | None, now: datetime, stale_after_s: float = STALE_AFTER_S) -> bool:
    """The stations' one staleness rule: no score at all, or one older than ``stale_after_s``."""
    return point is None or score_age_s(point, now) > stale_after_s


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


@dataclass(frozen=True)
class HealthView:
    """A bed's health as the station shows it: the state, since when, how often it changed, whether it alarms."""

    state: str  # ok / degraded / no_score / "?" (no health message yet)
    detail: str | None
    since: datetime | None  # station time the current state began (as far as the station saw)
    changes: int  # state changes within ``HEALTH_CHANGES_WINDOW_S``
    alarm: bool  # not ok for at least ``HEALTH_ALARM_AFTER_S``


def health_view(bed: BedState, now: datetime, *, alarm_after_s: float = HEALTH_ALARM_AFTER_S,
                window_s: float = HEALTH_CHANGES_WINDOW_S) -> HealthView:
    """Group the bed's health changes: an alarm only for a lasting non-ok state; flapping is a count."""
    if not bed.health:
        return HealthView("?", None, None, 0, False)
    state = str(bed.health.get("state", "?"))
    detail = bed.health.get("detail")
    since = bed.health_changes[-1][0] if bed.health_changes else bed.health_at
    changes = sum(1 for t, _ in list(bed.health_changes)[1:] if 0 <= (now - t).total_seconds() <= window_s)
    lasted = (now - since).total_seconds() if since is not None else 0.0
    return HealthView(state, str(detail) if detail else None, since, changes,
                      alarm=state != "ok" and lasted >= alarm_after_s)
