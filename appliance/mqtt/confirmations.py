"""Which published scores a station has confirmed storing: the device's side of delivery confirmation.

Why: a PUBACK only says the broker took a score. A broker may still drop it before a station reads it (an
offline station's queue is full: mosquitto ``max_queued_messages``), and then the device's own figures show
nothing wrong. Each station therefore publishes, per bed, what it has stored (``messages.Confirmation`` on
``<prefix>/confirm/<station-id>``, retained; see ``appliance.station.confirm``), and this tracker compares that
with what the broker acknowledged:

- a score enters the tracker when the broker acknowledges it (``acked_row``) and is *awaiting* for a grace
  time (the station needs a moment to store and confirm, at most once a second per bed);
- a confirmation from any station that covers it removes it; a score still unconfirmed after the grace time
  is *unconfirmed*: counted in health and named in the journal as a sequence range ("delivery gap");
- a late confirmation (a station back from an outage with a persistent session) still removes it, so the
  count falls again, and the journal says so;
- while no station has ever confirmed for this bed, nothing is judged: health says ``state: none`` with
  ``unconfirmed: null`` (never "0 unconfirmed"), and the journal says once that no station confirms.

A confirmation whose ``highest`` lies far beyond anything this device has had acknowledged belongs to an
earlier counter (an outbox file started afresh) and is not applied to new scores; the station starts a new
claim when it sees the sequence go back. Threads: ``receive`` runs on paho's network thread, the rest on the
publisher's pump thread; one lock, held only for bookkeeping (never while calling paho), so it cannot
deadlock against paho's own mutex. ``receive`` never raises.
"""
from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from appliance.mqtt import messages, topics
from appliance.textcut import cut

log = logging.getLogger(__name__)

#: A confirmation claiming this many sequences beyond the device's highest acknowledged one is from an
#: earlier counter, not a station that is merely ahead of the device's PUBACK bookkeeping.
OTHER_COUNTER_SLACK = 1000
#: Unconfirmed ranges kept (oldest forgotten beyond this, still counted) and outbox rows awaiting PUBACK.
MAX_RANGES = 1024
MAX_ROWS = 4096
#: A growing gap is journalled at least this often, not once per score.
LOG_EVERY_S = 60.0


def _ranges_text(ranges: list[tuple[int, int]], limit: int = 8) -> str:
    """``"11-33, 40"``; beyond ``limit`` ranges, the count of the rest."""
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append(f"+{len(ranges) - limit} more ranges")
    return ", ".join(parts)


class RangeSet:
    """A set of sequence numbers as sorted, disjoint ``[first, last]`` ranges, with a count."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.count = 0

    def add(self, seq: int) -> bool:
        """Add one sequence; False when already present. Mostly appends (sequences grow)."""
        r = self.ranges
        if not r or seq > r[-1][1] + 1:
            r.append((seq, seq))
        elif seq == r[-1][1] + 1:
            r[-1] = (r[-1][0], seq)
        else:
            i = bisect.bisect_right(r, (seq, seq)) - 1
            if i >= 0 and r[i][0] <= seq <= r[i][1]:
                return False
            left = i >= 0 and r[i][1] == seq - 1
            right = i + 1 < len(r) and r[i + 1][0] == seq + 1
            if left and right:
                r[i:i + 2] = [(r[i][0], r[i + 1][1])]
            elif left:
                r[i] = (r[i][0], seq)
            elif right:
                r[i + 1] = (seq, r[i + 1][1])
            else:
                r.insert(i + 1, (seq, seq))
        self.count += 1
        return True

    def remove_range(self, first: int, last: int) -> list[tuple[int, int]]:
        """Remove every sequence in [first, last]; returns the ranges that were removed."""
        removed: list[tuple[int, int]] = []
        kept: list[tuple[int, int]] = []
        for a, b in self.ranges:
            if b < first or a > last:
                kept.append((a, b))
                continue
            lo, hi = max(a, first), min(b, last)
            removed.append((lo, hi))
            if a < lo:
                kept.append((a, lo - 1))
            if hi < b:
                kept.append((hi + 1, b))
        if removed:
            self.ranges = kept
            self.count -= sum(b - a + 1 for a, b in removed)
        return removed

    def intersect(self, first: int, last: int) -> list[tuple[int, int]]:
        return [(max(a, first), min(b, last)) for a, b in self.ranges if not (b < first or a > last)]

    def pop_oldest(self) -> int:
        """Forget the oldest range; returns how many sequences it held."""
        a, b = self.ranges.pop(0)
        self.count -= b - a + 1
        return b - a + 1


@dataclass
class _Station:
    claim: messages.Confirmation
    received: float  # monotonic seconds


class ConfirmationTracker:
    """The device's view of what the stations stored (see the module docstring); ``health()`` for the message."""

    def __init__(self, *, device_id: str, prefix: str, grace_s: float,
                 clock: Callable[[], float] = time.monotonic, log_every_s: float = LOG_EVERY_S,
                 max_ranges: int = MAX_RANGES) -> None:
        self.device_id = device_id
        self.prefix = prefix
        self.grace_s = float(grace_s)
        self._clock = clock
        self._log_every_s = log_every_s
        self._max_ranges = max_ranges
        self._lock = threading.Lock()
        self._rows: OrderedDict[int, int] = OrderedDict()  # outbox row id -> sequence, while awaiting PUBACK
        self._fresh: dict[int, float] = {}  # acknowledged, within the grace time, unconfirmed: seq -> when
        self._overdue = RangeSet()  # past the grace time, confirmed by no station
        self._forgotten = 0  # unconfirmed sequences in ranges dropped beyond max_ranges
        self._stations: dict[str, _Station] = {}
        self._elsewhere: set[str] = set()  # stations heard confirming another device on this bed (logged once)
        self._highest: int | None = None
        self._invalid = 0
        self._open: tuple[int, int] | None = None  # gap being gathered for the journal
        self._open_at = 0.0
        self._said_none = False

    # --------------------------------------------------------------------------- from the publisher
    def owns(self, topic: str) -> bool:
        """True for a topic under this bed's ``confirm/`` leaf (the publisher routes it here)."""
        return topic.startswith(topics.topic(self.prefix, f"{topics.CONFIRM}/"))

    def sending(self, row_id: int, payload: bytes) -> None:
        """An outbox row handed to paho: remember its sequence until its PUBACK (replays included)."""
        try:
            seq = json.loads(payload).get("sequence")
        except (ValueError, AttributeError):
            return
        if isinstance(seq, int) and not isinstance(seq, bool):
            with self._lock:
                self._rows[row_id] = seq
                self._rows.move_to_end(row_id)
                while len(self._rows) > MAX_ROWS:
                    self._rows.popitem(last=False)

    def acked_row(self, row_id: int) -> None:
        """The broker acknowledged this row: its score now awaits a station's confirmation."""
        with self._lock:
            seq = self._rows.pop(row_id, None)
            if seq is None:
                return
            now = self._clock()
            self._highest = seq if self._highest is None else max(self._highest, seq)
            if not any(self._usable(s.claim) and s.claim.covers(seq) for s in self._stations.values()):
                self._fresh[seq] = now
            self._review(now)

    def receive(self, topic: str, payload: bytes) -> None:
        """A message on ``<prefix>/confirm/<station>`` (paho's thread). Never raises: bad input is counted."""
        try:
            self._receive(topic, bytes(payload))
        except Exception:  # noqa: BLE001 - a bug here must not kill paho's network thread
            with self._lock:
                self._invalid += 1
            log.exception("mqtt: confirmation on %s could not be handled", cut(topic))

    def health(self) -> dict[str, Any]:
        """The ``confirmations`` block of the health message (``messages.CONFIRMATIONS_HEALTH_SCHEMA``)."""
        with self._lock:
            now = self._clock()
            self._review(now)
            confirming = bool(self._stations)
            return {
                "state": "confirming" if confirming else "none",
                "grace_s": self.grace_s,
                "unconfirmed": self._overdue.count + self._forgotten if confirming else None,
                "awaiting": len(self._fresh),
                "gaps": [list(r) for r in self._overdue.ranges[-messages.MAX_HEALTH_GAPS:]],
                "highest_published": self._highest,
                "stations": {name: {"through": s.claim.through, "highest": s.claim.highest,
                                    "age_s": round(max(0.0, now - s.received), 3)}
                             for name, s in sorted(self._stations.items())},
                "invalid": self._invalid,
            }

    # ------------------------------------------------------------------------------------ internals
    def _receive(self, topic: str, payload: bytes) -> None:
        station = topics.parse_confirm_topic(self.prefix, topic)
        try:
            if station is None or len(station) > messages.MAX_STATION_ID_LEN:
                raise ValueError(f"confirmation topic: station id must be one level of at most "
                                 f"{messages.MAX_STATION_ID_LEN} characters")
            claim = None if not payload else messages.parse_confirmation(payload)
        except ValueError as exc:
            with self._lock:
                self._invalid += 1
            log.warning("mqtt: ignored confirmation on %s: %s", cut(topic), cut(str(exc), 300))
            return
        assert station is not None
        with self._lock:
            if claim is None:  # an empty retained message: the station was retired
                if self._stations.pop(station, None) is not None:
                    log.info("mqtt: station %s no longer confirms for this bed (its confirmation was cleared)",
                             station)
                return
            if claim.device_id != self.device_id:
                if station not in self._elsewhere and len(self._elsewhere) < messages.MAX_CONFIRMING_STATIONS:
                    self._elsewhere.add(station)
                    log.info("mqtt: station %s confirms device %s on this bed, not %s (ignored until it sees "
                             "this device)", station, cut(claim.device_id), self.device_id)
                self._stations.pop(station, None)
                return
            if station not in self._stations and len(self._stations) >= messages.MAX_CONFIRMING_STATIONS:
                self._invalid += 1
                log.warning("mqtt: ignored confirmation from station %s: already tracking %d stations", station,
                            len(self._stations))
                return
            if station not in self._stations:
                log.info("mqtt: station %s confirms deliveries for this bed (through sequence %d)", station,
                         claim.through)
                self._said_none = False
            now = self._clock()
            self._stations[station] = _Station(claim, now)
            self._elsewhere.discard(station)
            if self._usable(claim):
                self._apply(station, claim)
            self._review(now)

    def _usable(self, claim: messages.Confirmation) -> bool:
        """False for a claim from an earlier counter (far beyond what this device had acknowledged)."""
        return self._highest is None or claim.highest <= self._highest + OTHER_COUNTER_SLACK

    def _apply(self, station: str, claim: messages.Confirmation) -> None:
        for seq in [s for s in self._fresh if claim.covers(s)]:
            del self._fresh[seq]
        late: list[tuple[int, int]] = []
        for first, last in claim.covered():
            late += self._overdue.remove_range(first, last)
        if late:
            log.info("mqtt: station %s confirmed %d score(s) late: sequence %s", station,
                     sum(b - a + 1 for a, b in late), _ranges_text(sorted(late)))

    def _review(self, now: float) -> None:
        """Move scores past the grace time to unconfirmed and journal the gaps (caller holds the lock)."""
        due = sorted(seq for seq, t in self._fresh.items() if now - t >= self.grace_s)
        for seq in due:
            del self._fresh[seq]
        if not self._stations:
            if due and not self._said_none:
                self._said_none = True
                log.warning("mqtt: no station confirms deliveries for this bed: %d score(s) published without a "
                            "confirmation on %s (delivery to a station cannot be checked)", len(due),
                            topics.confirm_filter(self.prefix))
            return
        for seq in due:
            if not self._overdue.add(seq):
                continue
            if self._open is not None and seq == self._open[1] + 1:
                self._open = (self._open[0], seq)
            else:
                self._journal()
                self._open, self._open_at = (seq, seq), now
        while len(self._overdue.ranges) > self._max_ranges:
            self._forgotten += self._overdue.pop_oldest()
        if self._open is not None:
            nxt = self._open[1] + 1
            ended = self._highest is not None and nxt <= self._highest and nxt not in self._fresh
            if ended or now - self._open_at >= self._log_every_s:
                self._journal(ongoing=not ended)

    def _journal(self, *, ongoing: bool = False) -> None:
        """Log the gap gathered so far (the part no late confirmation has filled meanwhile)."""
        if self._open is None:
            return
        pieces = self._overdue.intersect(*self._open)
        self._open = None
        if not pieces:
            return
        count = sum(b - a + 1 for a, b in pieces)
        log.warning("mqtt: delivery gap: %d score(s) not confirmed by any station within %g s: sequence %s%s "
                    "(stations: %s)", count, self.grace_s, _ranges_text(pieces), " (gap still open)" if ongoing else "",
                    cut(", ".join(f"{n} through {s.claim.through}" for n, s in sorted(self._stations.items()))))
