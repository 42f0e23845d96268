"""The station's side of delivery confirmation: per bed, tell the device which scores this station has stored.

Why: the device can only see that the broker took a score; only a station knows what it received. Every
station (``neopain watch`` once a score is on its board, ``neopain bridge`` once every sink has it, the web
station later) feeds each stored score to one ``Confirmer``, which publishes per bed, on
``neopain/<site>/<bed>/confirm/<station-id>`` (retained, QoS 1), a ``messages.build_confirmation`` claim:
every sequence from ``since`` to ``highest`` is stored except the ``missing`` ranges. The device counts what no
station confirms (``appliance.mqtt.confirmations``).

Rate: at most one confirmation per bed per ``min_interval_s`` (200 beds must not flood the broker), except at
once when a gap closes (a late score filled a missing range) or a bed is seen for the first time; nothing is
sent for a bed whose claim did not change. Transport-free: ``publish(topic, payload) -> bool`` is given by the
caller (False: not sent, kept due and tried again), so watch, bridge and a web station share this class.
"""
from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from appliance.mqtt import messages, topics

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], bool]
#: A sequence this far below the first one a ledger holds is not a late replay (an outbox holds far fewer
#: rows) but a device whose counter started again: the ledger starts over.
RESET_BELOW = 100_000


def default_station_id(kind: str) -> str:
    """``<kind>-<host name>``: distinct per machine and per program, and one topic level (dots are fine)."""
    host = "".join(c for c in socket.gethostname() if c not in "/+#\0") or "station"
    return f"{kind}-{host}"[: messages.MAX_STATION_ID_LEN]


@dataclass
class SequenceLedger:
    """What one station stored of one device's sequence: [since, highest] minus ``missing`` (bounded)."""

    device_id: str
    since: int
    highest: int
    missing: list[tuple[int, int]] = field(default_factory=list)
    max_ranges: int = messages.MAX_MISSING_RANGES

    @classmethod
    def first(cls, device_id: str, sequence: int) -> "SequenceLedger":
        return cls(device_id, sequence, sequence)

    def holds(self, sequence: int) -> bool:
        return self.since <= sequence <= self.highest and not any(a <= sequence <= b for a, b in self.missing)

    def store(self, sequence: int, *, new: bool = True) -> str:
        """Record one stored score; returns ``advanced``, ``filled`` (closed a whole gap), ``partial`` (shrank
        a gap), ``held`` (nothing new) or ``reset`` (the device's counter started again).

        ``new``: the station had not seen this message id before. A new message with a sequence already held
        means the device's counter restarted (message ids are never re-used), as does a sequence far below
        ``since``.
        """
        if (new and self.holds(sequence)) or sequence < self.since - RESET_BELOW:
            self.since = self.highest = sequence
            self.missing = []
            return "reset"
        if sequence > self.highest:
            if sequence > self.highest + 1:
                self.missing.append((self.highest + 1, sequence - 1))
            self.highest = sequence
            self._bound()
            return "advanced"
        if sequence < self.since:  # an older score replayed late: extend the claim downwards
            if sequence < self.since - 1:
                self.missing.insert(0, (sequence + 1, self.since - 1))
            self.since = sequence
            self._bound()
            return "advanced"
        for i, (a, b) in enumerate(self.missing):
            if a <= sequence <= b:
                pieces = [(x, y) for x, y in ((a, sequence - 1), (sequence + 1, b)) if x <= y]
                self.missing[i:i + 1] = pieces
                return "filled" if not pieces else "partial"
        return "held"

    def _bound(self) -> None:
        """Beyond ``max_ranges`` gaps, forget the oldest: the claim starts after it (claims less, never more)."""
        while len(self.missing) > self.max_ranges:
            _, last = self.missing.pop(0)
            self.since = last + 1

    def message(self) -> dict[str, object]:
        return messages.build_confirmation(device_id=self.device_id, since=self.since, highest=self.highest,
                                           missing=self.missing)


@dataclass
class _Bed:
    ledger: SequenceLedger
    sent_at: float | None = None
    dirty: bool = True
    urgent: bool = True


class Confirmer:
    """Per-bed confirmations of one station, rate-limited (see the module docstring). Thread-safe: ``stored``
    from any thread (paho's, a bridge worker), ``flush`` from the ``start()`` thread or a test."""

    def __init__(self, station_id: str, publish: Publish, *, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        topics.check_level("--station-id", station_id)
        if len(station_id) > messages.MAX_STATION_ID_LEN:
            raise ValueError(f"--station-id: at most {messages.MAX_STATION_ID_LEN} characters")
        if not min_interval_s > 0:
            raise ValueError(f"--confirm-interval: must be > 0, got {min_interval_s}")
        self.station_id = station_id
        self._publish = publish
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._beds: dict[tuple[str, str], _Bed] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    def topic(self, site: str, bed: str) -> str:
        return topics.confirm_topic(topics.bed_prefix(site, bed), self.station_id)

    def stored(self, site: str, bed: str, device_id: str, sequence: int, *, new: bool = True) -> None:
        """This station now holds score ``sequence`` of ``device_id`` on bed ``site``/``bed``."""
        if isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0 or not device_id:
            return
        with self._lock:
            entry = self._beds.get((site, bed))
            if entry is None or entry.ledger.device_id != device_id:
                # A first score, or another device on this bed: a new claim, sent at once.
                self._beds[(site, bed)] = entry = _Bed(SequenceLedger.first(device_id, sequence))
                outcome = "reset"
            else:
                outcome = entry.ledger.store(sequence, new=new)
            if outcome == "held":
                return
            wake = not entry.dirty or outcome in ("filled", "reset")  # the thread may sleep until woken
            entry.dirty = True
            if outcome in ("filled", "reset"):
                entry.urgent = True
        if wake:
            self._wake.set()

    def resend_all(self) -> None:
        """Mark every bed due (after a reconnect: what was not sent while away goes out now)."""
        with self._lock:
            for entry in self._beds.values():
                entry.dirty = entry.urgent = True
        self._wake.set()

    def flush(self, *, force: bool = False) -> float | None:
        """Publish every due bed (``force``: every changed bed, interval or not); returns seconds until the
        next one falls due (None: nothing pending)."""
        now = self._clock()
        due: list[tuple[tuple[str, str], bytes]] = []
        wait: float | None = None
        with self._lock:
            for key, entry in self._beds.items():
                if not entry.dirty:
                    continue
                left = 0.0
                if not (force or entry.urgent) and entry.sent_at is not None:
                    left = entry.sent_at + self.min_interval_s - now
                if left > 0:
                    wait = left if wait is None else min(wait, left)
                    continue
                due.append((key, messages.encode(entry.ledger.message())))
                entry.dirty = entry.urgent = False
                entry.sent_at = now
        retry: list[tuple[str, str]] = []
        for (site, bed), payload in due:  # outside the lock: the transport may block briefly
            if self._publish(self.topic(site, bed), payload):
                self.sent += 1
            else:
                self.failed += 1
                retry.append((site, bed))
        if retry:
            with self._lock:
                for key in retry:
                    self._beds[key].dirty = True
            wait = self.min_interval_s if wait is None else min(wait, self.min_interval_s)
        return wait

    def start(self) -> "Confirmer":
        """Run ``flush`` on a thread: at once when woken, else when the next bed falls due."""
        self._thread = threading.Thread(target=self._run, name="station-confirm", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread after one last flush, so scores stored just before exit are confirmed too."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                wait = self.flush(force=stopping)
            except Exception:  # noqa: BLE001 - a bad bed must not stop every other bed's confirmations
                log.exception("station: confirmation flush failed")
                wait = self.min_interval_s
            if stopping:
                return
            self._wake.wait(wait)
            self._wake.clear()


def add_confirm_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """``--station-id``, ``--confirm-interval`` and ``--no-confirm``, shared by watch and bridge."""
    g = parser.add_argument_group("delivery confirmation")
    g.add_argument("--station-id", default=None, metavar="ID",
                   help=f"this station's name in neopain/<site>/<bed>/confirm/<ID>, where it tells each device what "
                        f"it stored (default: {kind}-<host name>; give each station its own)")
    g.add_argument("--confirm-interval", type=float, default=1.0, metavar="S",
                   help="at most one confirmation per bed every S seconds, except when a gap closes (default: 1)")
    g.add_argument("--no-confirm", action="store_true",
                   help="publish no confirmations (a read-only display; the devices then cannot count on it)")


def station_id_from_args(args: argparse.Namespace, kind: str, fallback: str | None = None) -> str | None:
    """The station id to confirm under: ``--station-id``, else ``<kind>-<fallback>`` (e.g. the bridge's client
    id, unique per bridge), else ``<kind>-<host name>``; None with ``--no-confirm``."""
    if args.no_confirm:
        return None
    if args.station_id:
        return args.station_id
    if fallback:
        name = "".join(c for c in fallback if c not in "/+#\0")
        if name:
            return f"{kind}-{name}"[: messages.MAX_STATION_ID_LEN]
    return default_station_id(kind)
