"""sd_notify over a real NOTIFY_SOCKET, the progress-gated watchdog, journald/stderr logging, signals."""

from __future__ import annotations

import io
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest

from appliance import service

REPO = Path(__file__).resolve().parents[2]


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address if abstract else address)
        self.env_value = "@" + address if abstract else address

    def receive(self, timeout: float = 2.0) -> tuple[str, int] | None:
        """(message, sender pid) or None when nothing arrives in ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        return data.decode(), pid

    def messages(self, timeout: float) -> list[str]:
        out = []
        while (got := self.receive(timeout)) is not None:
            out.append(got[0])
        return out


@pytest.fixture()
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    # A short folder: sun_path holds at most 107 bytes and pytest's tmp_path can be longer.
    folder = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    sock = NotifySocket(os.path.join(folder, "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.env_value)
    yield sock
    sock.sock.close()
    shutil.rmtree(folder)


def test_systemd_python_is_the_notify_backend() -> None:
    assert service.NOTIFY_BACKEND == "systemd-python"


def test_ready_status_stopping_arrive(notify_socket: NotifySocket) -> None:
    assert service.ready("engines loaded: onnxruntime")
    assert notify_socket.receive() == ("READY=1\nSTATUS=engines loaded: onnxruntime", os.getpid())
    assert service.set_status("scoring every 2 s\nlast nips 3")
    assert notify_socket.receive()[0] == "STATUS=scoring every 2 s last nips 3"  # type: ignore[index]
    assert service.stopping()
    assert notify_socket.receive()[0] == "STOPPING=1"  # type: ignore[index]
    assert service.extend_timeout(1.5)
    assert notify_socket.receive()[0] == "EXTEND_TIMEOUT_USEC=1500000"  # type: ignore[index]


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert service.ready() is False
    assert service._send_datagram("READY=1") is False


@pytest.mark.parametrize("abstract", [False, True])
def test_fallback_datagram_sender(abstract: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-written sender used when systemd-python is absent speaks the same protocol."""
    folder = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    try:
        address = f"neopain-test-{os.getpid()}" if abstract else os.path.join(folder, "notify")
        sock = NotifySocket(address, abstract=abstract)
        monkeypatch.setenv("NOTIFY_SOCKET", sock.env_value)
        assert service._send_datagram("WATCHDOG=1")
        assert sock.receive() == ("WATCHDOG=1", os.getpid())
        sock.sock.close()
    finally:
        shutil.rmtree(folder)


def test_notifications_come_from_the_main_process(notify_socket: NotifySocket) -> None:
    """NotifyAccess=main: the daemon process itself (not a helper) must send READY and WATCHDOG."""
    code = textwrap.dedent("""
        from appliance import service
        dog = service.Watchdog()
        assert dog.interval_s == 0.05, dog.interval_s
        service.ready("up")
        dog.start()
        dog.progress()
        import time; time.sleep(0.3)
        dog.stop()
        service.stopping()
    """)
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "100000",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    received = []
    while (got := notify_socket.receive(0.2)) is not None:
        received.append(got)
    assert [m for m, _ in received] == ["READY=1\nSTATUS=up", "WATCHDOG=1", "STOPPING=1"]
    assert {pid for _, pid in received} == {proc.pid}, "every message from the main process"


def test_watchdog_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert service.watchdog_interval_s() is None and not service.Watchdog().enabled
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert service.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert service.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert service.watchdog_interval_s() == 15.0


def test_ping_only_after_progress(notify_socket: NotifySocket) -> None:
    dog = service.Watchdog(interval_s=10.0)
    assert dog.ping_if_progressed() is False
    dog.progress()
    dog.progress()
    assert dog.ping_if_progressed() is True
    assert dog.ping_if_progressed() is False  # two progress calls still earn one ping
    assert notify_socket.messages(0.2) == ["WATCHDOG=1"]


def test_watchdog_silent_while_loop_stalls_and_pings_while_it_progresses(notify_socket: NotifySocket) -> None:
    interval = 0.1
    with service.Watchdog(interval_s=interval) as dog:
        # No progress: no ping at all, however long we wait.
        assert notify_socket.messages(timeout=0.5) == []
        # A loop that makes progress every 20 ms: pings about every interval, not more often.
        start = time.monotonic()
        while time.monotonic() - start < 0.6:
            dog.progress()
            time.sleep(0.02)
        pings = notify_socket.messages(timeout=0.3)
        # The loop stalls again: the pings stop.
        assert notify_socket.messages(timeout=0.4) == []
    assert set(pings) == {"WATCHDOG=1"}
    assert 3 <= len(pings) <= 8, len(pings)
    assert dog.pings == len(pings)


def test_stderr_logging_shows_structured_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    stream = io.StringIO()
    handler = service.make_log_handler(stream=stream)
    assert isinstance(handler, logging.StreamHandler)
    logger = logging.getLogger("neopain.test.stderr")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("score published", extra=service.journal_fields(bed="b3", nips=4.5))
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue().strip()
    assert "WARNING neopain.test.stderr: score published" in line and line.endswith("BED=b3 NIPS=4.5")


def test_journal_handler_under_systemd_sends_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    handler = service.make_log_handler(identifier="neopain-test")
    from systemd.journal import JournalHandler

    assert isinstance(handler, JournalHandler)
    sent: list[dict] = []
    handler.send = lambda text, /, **fields: sent.append({**fields, "MESSAGE": text})  # type: ignore[attr-defined]
    logger = logging.getLogger("neopain.test.journal")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("engine failed", extra=service.journal_fields(backend="tensorrt"))
    finally:
        logger.removeHandler(handler)
    (entry,) = sent
    assert entry["MESSAGE"] == "engine failed" and entry["BACKEND"] == "tensorrt"
    assert entry["SYSLOG_IDENTIFIER"] == "neopain-test" and entry["PRIORITY"] == "3"
    with pytest.raises(ValueError, match="journal field"):
        service.journal_fields(**{"bad-name": 1})


def test_sigterm_stops_and_sighup_reloads() -> None:
    calls: list[str] = []
    previous = signal.getsignal(signal.SIGHUP)
    with service.SignalHandlers(on_stop=lambda: calls.append("stop"),
                                on_reload=lambda: calls.append("reload")) as handlers:
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 2
        while "reload" not in calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == ["reload"] and not handlers.stop_requested.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert handlers.stop_requested.wait(2.0)
        assert calls == ["reload", "stop"]
    assert signal.getsignal(signal.SIGHUP) is previous
