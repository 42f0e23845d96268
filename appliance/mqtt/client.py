"""The one place a paho client is made, for the device's publisher, the station and the demo subscriber.

Why one factory: every client must speak the same protocol (MQTT 5, paho's version 2 callbacks) and apply
credentials the same way (user name + password read from a file, TLS that verifies the broker's
certificate), so a security rule tightened here holds for every client. Callers add what is theirs: the
last will, reconnect delays, callbacks, the connect call.

Why a supervised network thread: paho's ``loop_start`` thread retries only ``OSError``. Anything else --
a host name the resolver cannot encode (``UnicodeError`` for ``broker..local``), an exception from a
callback -- ends the thread, and with it every publish and reconnect, while the process goes on as if
connected later. Two rules keep it alive:

- Callbacks: ``suppress_exceptions`` (paho's own switch): paho logs ``Caught exception in on_message: ...``
  to the client's logger and goes on with the packet handled (a QoS 1 message is still acknowledged).
  Re-raised, the half-handled packet would be read again and again.
- Everything else: :class:`SupervisedClient` runs paho's loop, logs the exception with the reason, tells its
  owner (``on_loop_error``), waits (doubling from ``loop_retry_min_s`` to ``loop_retry_max_s``) and enters
  the loop again; if the connection was up, it is reconnected first, so no half-read packet is read again.

The override is of paho's ``_thread_main`` (the target of ``loop_start``, paho 2.x);
``tests/appliance/mqtt/test_client.py`` proves both rules on a real thread, so a paho that changes them
fails CI.
"""
from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any, Callable

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


LoopErrorHandler = Callable[[BaseException, float], None]


class SupervisedClient(mqtt.Client):
    """paho's client whose ``loop_start`` thread survives any exception (see the module docstring).

    ``on_loop_error(exc, retry_in_s)`` runs on the network thread after the exception was logged; it must
    only record (state, counters). ``loop_errors`` counts them.
    """

    def __init__(self, *args: Any, logger: logging.Logger | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_loop_error: LoopErrorHandler | None = None
        self.loop_errors = 0
        self.loop_retry_min_s = 1.0
        self.loop_retry_max_s = 30.0
        self._supervisor_log = logger or logging.getLogger(__name__)
        self._traced: set[type] = set()  # exception types whose traceback was logged once already

    def loop_retry_set(self, min_s: float, max_s: float) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError("loop_retry_set: need 0 < min_s <= max_s")
        self.loop_retry_min_s, self.loop_retry_max_s = float(min_s), float(max_s)

    def _thread_main(self) -> None:  # paho 2.x: the target of loop_start()'s thread
        delay = self.loop_retry_min_s
        try:
            while not self._thread_terminate:
                entered = time.monotonic()
                try:
                    self.loop_forever(retry_first_connection=True)
                    return  # disconnect() or loop_stop(): a requested end
                except Exception as exc:  # noqa: BLE001 - the point: nothing may end this thread silently
                    if time.monotonic() - entered > self.loop_retry_max_s:
                        delay = self.loop_retry_min_s  # it ran a good while since the last failure
                    self.loop_errors += 1
                    first = type(exc) not in self._traced
                    self._traced.add(type(exc))
                    self._supervisor_log.error("mqtt: network loop failed (%s: %s); retrying in %g s",
                                               type(exc).__name__, exc, delay, exc_info=exc if first else None)
                    if self.on_loop_error is not None:
                        try:
                            self.on_loop_error(exc, delay)
                        except Exception:  # noqa: BLE001
                            self._supervisor_log.exception("mqtt: on_loop_error handler failed")
                    self._pause(delay)
                    delay = min(delay * 2, self.loop_retry_max_s)
                    if self.is_connected() and not self._thread_terminate:
                        self._restart_connection()
        finally:
            self._thread = None

    def _restart_connection(self) -> None:
        """Drop and reopen the connection (paho's ``reconnect`` resets its packet state); a failure is left to
        the loop, which retries with paho's reconnect delays."""
        try:
            self.reconnect()
        except (OSError, ValueError) as exc:
            self._supervisor_log.warning("mqtt: reconnect after a network loop failure failed: %s", exc)

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless ``loop_stop``/``disconnect`` asks the thread to end."""
        deadline = time.monotonic() + seconds
        while not self._thread_terminate and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def make_client(*, client_id: str, logger_name: str, username: str | None = None, password: str | None = None,
                tls_ca: Path | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                manual_ack: bool = False) -> SupervisedClient:
    """An MQTT 5 client, not yet connected, logging to ``logger_name``.

    ``client_id`` "" lets the broker assign one. ``username`` (with ``password``) is sent only when given;
    ``tls_ca`` enables TLS with the broker's certificate required and checked, ``tls_cert``/``tls_key`` add a
    client certificate. ``manual_ack``: the caller acknowledges QoS 1 messages itself (``client.ack``).
    """
    logger = logging.getLogger(logger_name)
    client = SupervisedClient(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                              manual_ack=manual_ack, logger=logger)
    client.enable_logger(logger)
    client.suppress_exceptions = True  # a callback's exception is logged by paho, never ends its thread
    if username:
        client.username_pw_set(username, password)
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca),
                       certfile=None if tls_cert is None else str(tls_cert),
                       keyfile=None if tls_key is None else str(tls_key),
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    return client
