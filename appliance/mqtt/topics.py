"""The MQTT topic vocabulary shared by device and station, defined once.

Every topic of a bed is ``neopain/<site>/<bed>/<leaf>``. The device publishes under its own prefix and the
station subscribes with wildcards for the site and the bed, so both must spell the root, the levels and the
leaves identically; they come from here and nowhere else. A site or bed name becomes one topic level, so it
is refused when empty or when it holds '/', '+', '#' or NUL: such a name would publish into another bed's
topics or turn a publish topic into a wildcard filter.

Pure Python with no paho import: ``appliance.config`` uses it and must stay light.
"""
from __future__ import annotations

from typing import Sequence

TOPIC_ROOT = "neopain"

SCORE = "score"  # QoS 1 through the outbox, with an MQTT 5 expiry
STATUS = "status"  # retained online / offline (offline is the last will)
HEALTH = "health"  # retained JSON
VITALS = "vitals"  # QoS 0, best effort
CMD = "cmd"  # station -> device: cmd/<name>
CONFIRM = "confirm"  # station -> device: confirm/<station-id>, retained, QoS 1 (what the station has stored)

#: The leaves the central station reads (watch and bridge); vitals and commands are not its business.
STATION_LEAVES: tuple[str, ...] = (SCORE, STATUS, HEALTH)

_NOT_IN_A_LEVEL = "/+#\0"


def check_level(name: str, value: str) -> str:
    """``value`` if it can be one topic level; ValueError naming the setting ``name`` otherwise."""
    if not isinstance(value, str) or not value or any(c in value for c in _NOT_IN_A_LEVEL):
        raise ValueError(f"{name}: must be a non-empty string without '/', '+', '#', got {value!r}")
    return value


def bed_prefix(site: str, bed: str) -> str:
    """``neopain/<site>/<bed>``: every topic of one bed lives under it."""
    return f"{TOPIC_ROOT}/{check_level('site', site)}/{check_level('bed', bed)}"


def topic(prefix: str, leaf: str) -> str:
    """``<prefix>/<leaf>``, e.g. ``topic(bed_prefix("nicu", "3"), SCORE)``; ``leaf`` may have levels (``cmd/#``)."""
    return f"{prefix}/{leaf}"


def station_filters(site: str | None, leaves: Sequence[str] = STATION_LEAVES, *, name: str = "site") -> list[str]:
    """Subscription filters for ``leaves`` of every bed of ``site`` (of every site when None).

    ``name`` is what a refused site is called in the error (the station passes its ``--site`` flag).
    """
    level = "+" if site is None else check_level(name, site)
    return [topic(f"{TOPIC_ROOT}/{level}/+", leaf) for leaf in leaves]


def confirm_topic(prefix: str, station_id: str) -> str:
    """``<prefix>/confirm/<station-id>``: one retained confirmation per bed and station.

    Under the bed's prefix so a device reads every station's confirmation with one filter of its own
    (:func:`confirm_filter`) and a bed's ACL needs no rule outside its prefix; one level per station so several
    stations confirm independently and the broker keeps the latest of each (retained). Five levels, so the
    stations' own ``neopain/+/+/<leaf>`` filters never receive each other's confirmations.
    """
    return topic(prefix, f"{CONFIRM}/{check_level('station id', station_id)}")


def confirm_filter(prefix: str) -> str:
    """The device's subscription: every station's confirmation for this bed (``<prefix>/confirm/+``)."""
    return topic(prefix, f"{CONFIRM}/+")


def parse_confirm_topic(prefix: str, text: str) -> str | None:
    """The station id of ``<prefix>/confirm/<station-id>``, else None (another bed, another leaf, more levels)."""
    head = topic(prefix, f"{CONFIRM}/")
    if not text.startswith(head):
        return None
    station = text[len(head):]
    return station if station and not any(c in station for c in _NOT_IN_A_LEVEL) else None


def parse_topic(text: str, leaves: Sequence[str] = STATION_LEAVES) -> tuple[str, str, str] | None:
    """``neopain/<site>/<bed>/<leaf>`` -> (site, bed, leaf) for one of ``leaves``, else None."""
    parts = text.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT or parts[3] not in leaves or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2], parts[3]
