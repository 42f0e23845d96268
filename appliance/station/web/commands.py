"""A nurse's rating on the bed page, sent to the bed's device as the calibration rating command it already
accepts: ``neopain/<site>/<bed>/cmd/calibration/rate`` with ``{"nips", "rater", "at"}`` (the device's
``appliance.scoring.ratings.CalibrationRecorder`` stores it in its calibration session), in the command
envelope of ``appliance.mqtt.messages``: a fresh ``command_id`` (the device executes it at most once), the
``sent_utc`` time, the target ``bed`` and, when the station key is configured, the HMAC over topic and body.

The device takes the total; the items are kept with the rating on the station. The rater is the logged-in
user's name. The rating is recorded on the station only once the broker has acknowledged the command.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import paho.mqtt.client as mqtt

from appliance.mqtt import messages, topics

RATE_COMMAND = "calibration/rate"
assert RATE_COMMAND in messages.KNOWN_COMMANDS
#: How long a rating waits for the broker's PUBACK before the page says it was not sent.
SEND_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RateCommand:
    topic: str
    payload: bytes
    command_id: str
    at: datetime
    signed: bool


def utc_text(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rate_command(site: str, bed: str, nips: int, rater: str, *, key: bytes | None,
                 at: datetime | None = None) -> RateCommand:
    """The command for one rating (``at``: when the nurse observed the infant; default now)."""
    if isinstance(nips, bool) or not isinstance(nips, int) or not 0 <= nips <= messages.NIPS_MAX:
        raise ValueError(f"nips: expected a whole NIPS 0-{messages.NIPS_MAX}, got {nips!r}")
    topic = topics.topic(topics.bed_prefix(site, bed), f"{topics.CMD}/{RATE_COMMAND}")
    when = at or datetime.now(timezone.utc)
    args = {"nips": nips, "rater": rater, "at": utc_text(when)}
    command_id = str(uuid.uuid4())
    if key is not None:
        payload = messages.sign_command(topic, args, key, command_id=command_id, bed=bed)
    else:
        payload = json.dumps({**args, "command_id": command_id, "sent_utc": utc_text(datetime.now(timezone.utc)),
                              "bed": bed}, separators=(",", ":")).encode("utf-8")
    return RateCommand(topic, payload, command_id, when, key is not None)


def send(connection: Any, command: RateCommand, timeout_s: float = SEND_TIMEOUT_S) -> str | None:
    """Publish ``command`` at QoS 1 on the station's ``StationConnection`` and wait for the broker's PUBACK;
    None when acknowledged, else why not (for the page)."""
    if not connection.connected.is_set():
        return f"the station is not connected to the broker ({connection.error or 'reconnecting'})"
    info = connection.client.publish(command.topic, command.payload, qos=1)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        return f"the broker connection refused the command: {mqtt.error_string(info.rc)}"
    try:
        info.wait_for_publish(timeout_s)
    except (ValueError, RuntimeError) as exc:  # paho: the connection dropped while waiting
        return f"the command was not sent: {exc}"
    if not info.is_published():
        return f"the broker did not acknowledge the command within {timeout_s:g} s"
    return None
