"""Living under systemd: readiness and watchdog notifications, journald logging, signals.

Why: ``neopain.service`` is ``Type=notify`` with ``WatchdogSec=``. systemd only marks the daemon started
when it says ``READY=1`` (sources open, engines loaded), and restarts it when the watchdog pings stop.
The ping must prove that the *scoring loop* is making progress -- a timer thread that pings regardless
would keep a hung pipeline alive forever -- so :class:`Watchdog` pings only after :meth:`Watchdog.progress`
was called since the previous ping.

Notifications go through systemd-python's ``systemd.daemon.notify`` (libsystemd's sd_notify). Only when
that module is not installed (a dev box without libsystemd) does :func:`notify` send the datagram itself;
:data:`NOTIFY_BACKEND` says which one is in use. Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
cheap no-op that returns False.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable

try:  # systemd-python: the supported path, a thin wrapper around libsystemd.
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - exercised only where systemd-python is absent
    _sd_daemon = None
    _sd_journal = None

#: "systemd-python" when systemd.daemon.notify is used, "socket" for the hand-written fallback.
NOTIFY_BACKEND = "systemd-python" if _sd_daemon is not None else "socket"

log = logging.getLogger(__name__)


def _send_datagram(message: str) -> bool:
    """sd_notify without libsystemd: one datagram to ``$NOTIFY_SOCKET`` (path or ``@abstract``)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock and other families are not used on the device
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(message.encode("utf-8"), address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", address, exc)
            return False
    return True


def notify(message: str) -> bool:
    """Send one sd_notify message (e.g. ``"READY=1\\nSTATUS=scoring"``); False when not under systemd."""
    if "\0" in message:
        raise ValueError("sd_notify message must not contain NUL")
    if _sd_daemon is not None:
        return bool(_sd_daemon.notify(message))
    return _send_datagram(message)


def _status_text(text: str) -> str:
    # STATUS= is one line; a newline would start a new (bogus) assignment.
    return " ".join(text.split())


def ready(status: str | None = None) -> bool:
    """``READY=1``: call once sources are open and engines are loaded, not before."""
    return notify("READY=1" + (f"\nSTATUS={_status_text(status)}" if status else ""))


def set_status(text: str) -> bool:
    """``STATUS=``: the free text ``systemctl status neopain`` shows."""
    return notify(f"STATUS={_status_text(text)}")


def stopping(status: str | None = None) -> bool:
    """``STOPPING=1``: shutdown began (so a slow flush of the outbox is not mistaken for a hang)."""
    return notify("STOPPING=1" + (f"\nSTATUS={_status_text(status)}" if status else ""))


def reloading(status: str | None = None) -> bool:
    """``RELOADING=1``; send :func:`ready` again when the reload is done."""
    return notify("RELOADING=1" + (f"\nSTATUS={_status_text(status)}" if status else ""))


def extend_timeout(seconds: float) -> bool:
    """``EXTEND_TIMEOUT_USEC=``: ask for more start/stop time (e.g. while engines load on a cold cache)."""
    return notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def watchdog_interval_s() -> float | None:
    """Half of ``$WATCHDOG_USEC`` (systemd's advice), or None when no watchdog is asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # set for another process (e.g. inherited by a child)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 2_000_000 if value > 0 else None


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval_s`` -- but only if the scoring loop called :meth:`progress`
    since the previous ping.

    A background thread waits until the next ping is due; if progress was reported by then it pings at once,
    otherwise it pings the moment progress arrives. A stalled loop therefore stops the pings and systemd
    restarts the service after ``WatchdogSec=``. Keep ``WatchdogSec`` well above the scoring cadence
    (the unit uses 30 s for a 2 s cadence).
    """

    def __init__(self, interval_s: float | None = None, *, send: Callable[[str], bool] = notify) -> None:
        self.interval_s = interval_s if interval_s is not None else watchdog_interval_s()
        self._send = send
        self._progress = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.last_ping: float | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    def progress(self) -> None:
        """Called by the scoring loop each time it completes a cycle. Cheap and thread-safe."""
        self._progress.set()

    def ping_if_progressed(self) -> bool:
        """Send ``WATCHDOG=1`` if progress was reported since the last ping; True if it did."""
        if not self._progress.is_set():
            return False
        self._progress.clear()
        self._send("WATCHDOG=1")
        self.pings += 1
        self.last_ping = time.monotonic()
        return True

    def start(self) -> "Watchdog":
        """Start the pinging thread (a no-op when no watchdog is configured)."""
        if self.enabled and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        assert self.interval_s is not None
        poll = min(self.interval_s, 0.05)
        while not self._stop.wait(self.interval_s if self.last_ping is not None else 0.0):
            # Due now: ping as soon as the loop has shown progress (maybe already).
            while not self._stop.is_set():
                if self._progress.wait(poll) and self.ping_if_progressed():
                    break


# --------------------------------------------------------------------------------------------------------------
# Logging

_FIELD_RE = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")


def under_systemd() -> bool:
    """True when started by systemd (stdout/stderr go to the journal, or a unit invocation id is set)."""
    return bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))


def journal_fields(**fields: Any) -> dict[str, str]:
    """``extra=`` for a log call: structured journal fields, e.g. ``log.info("scored", extra=journal_fields(
    bed="3", nips=4.2))`` -> ``BED=3 NIPS=4.2`` (journalctl -o verbose, or ``journalctl NIPS=...``)."""
    out = {}
    for key, value in fields.items():
        name = key.upper()
        if not _FIELD_RE.match(name):
            raise ValueError(f"journal field name {key!r} must be letters, digits and '_' (not starting with '_')")
        out[name] = str(value)
    return out


class FieldsFormatter(logging.Formatter):
    """Plain-text formatter that appends structured fields (uppercase ``extra=`` keys) as ``KEY=value``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = {k: v for k, v in vars(record).items() if _FIELD_RE.match(k)}
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
        return text


def make_log_handler(*, identifier: str = "neopain", journal: bool | None = None,
                     stream: Any = None) -> logging.Handler:
    """journald handler (structured fields kept) under systemd, plain stderr otherwise.

    ``journal=None`` decides by :func:`under_systemd`; the journal is only used when systemd-python is here.
    """
    use_journal = under_systemd() if journal is None else journal
    if use_journal and _sd_journal is not None:
        handler: logging.Handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER=identifier)
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(FieldsFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def setup_logging(level: str | int = "info", *, identifier: str = "neopain") -> logging.Handler:
    """Install :func:`make_log_handler` on the root logger (replacing handlers this function added before)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_neopain", False):
            root.removeHandler(h)
    handler = make_log_handler(identifier=identifier)
    handler._neopain = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


# --------------------------------------------------------------------------------------------------------------
# Signals


class SignalHandlers:
    """SIGTERM/SIGINT -> ``on_stop`` (graceful stop: finish the cycle, flush the outbox, STOPPING=1);
    SIGHUP -> ``on_reload`` (or a log line saying reload is not supported).

    Handlers only set flags or call short callbacks: the real work happens in the loop's own thread.
    Must be installed from the main thread (a Python rule); :meth:`restore` puts the previous handlers back.
    """

    def __init__(self, on_stop: Callable[[], None], on_reload: Callable[[], None] | None = None) -> None:
        self.on_stop = on_stop
        self.on_reload = on_reload
        self.stop_requested = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> "SignalHandlers":
        for signum, handler in ((signal.SIGTERM, self._stop), (signal.SIGINT, self._stop),
                                (signal.SIGHUP, self._hup)):
            self._previous[signum] = signal.signal(signum, handler)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> "SignalHandlers":
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C on a console: stop now
        self.stop_requested.set()
        self.on_stop()

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        if self.on_reload is None:
            log.warning("SIGHUP received: reload is not supported, restart the service instead")
            return
        self.on_reload()
