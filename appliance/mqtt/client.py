"""The one place a paho client is made, for the device's publisher, the station and the demo subscriber.

Why one factory: every client must speak the same protocol (MQTT 5, paho's version 2 callbacks) and apply
credentials the same way (user name + password read from a file, TLS that verifies the broker's
certificate), so a security rule tightened here holds for every client. Callers add what is theirs: the
last will, reconnect delays, callbacks, the connect call.
"""
from __future__ import annotations

import logging
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt

from appliance.config import password_from_text


def read_password(path: Path) -> str:
    """The password in a file (systemd credential or 0600 file), by the config's one rule
    (:func:`appliance.config.password_from_text`: the first line, not empty)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise OSError(f"mqtt.password_file {path}: cannot read ({exc.strerror or exc})") from exc
    except UnicodeDecodeError:
        raise ValueError(f"mqtt.password_file {path}: not UTF-8 text") from None
    return password_from_text(text, f"mqtt.password_file {path}")


def make_client(*, client_id: str, logger_name: str, username: str | None = None, password: str | None = None,
                tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                manual_ack: bool = False) -> mqtt.Client:
    """An MQTT 5 client, not yet connected, logging to ``logger_name``.

    ``client_id`` "" lets the broker assign one. ``username`` (with ``password``) is sent only when given;
    ``tls_ca`` enables TLS with the broker's certificate required and checked, ``tls_cert``/``tls_key`` add a
    client certificate. ``manual_ack``: the caller acknowledges QoS 1 messages itself (``client.ack``).
    """
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    client.enable_logger(logging.getLogger(logger_name))
    if username:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca),
                       certfile=None if tls_cert is None else str(tls_cert),
                       keyfile=None if tls_key is None else str(tls_key),
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return client
