"""Test harness for the daemon as a subprocess: a real sd_notify socket, the daemon process and its score log.

Why a real unix datagram socket: ``Type=notify`` is a contract with systemd over ``$NOTIFY_SOCKET``; binding
one here and giving its path to the daemon checks exactly what systemd would receive (READY, WATCHDOG,
STATUS, STOPPING), with libsystemd's sd_notify or the fallback sender doing the sending.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
SCORE_LINE = re.compile(r"score seq=(\d+) id=([0-9a-f-]{36})")


class NotifySocket:
    """A bound AF_UNIX datagram socket collecting sd_notify messages (one thread)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="np-notify-", dir="/tmp")  # short path: sun_path is 108 bytes
        self.path = os.path.join(self._dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode("utf-8", "replace"))

    def assignments(self, key: str) -> list[str]:
        """Every value given to ``KEY=`` so far (a datagram may hold several lines)."""
        with self._lock:
            return [line.split("=", 1)[1] for m in self.messages for line in m.splitlines()
                    if line.startswith(key + "=")]

    def wait_for(self, predicate: Callable[["NotifySocket"], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:
            pass


@dataclass
class DaemonProcess:
    """``python -m appliance.daemon --config CONFIG`` with its stderr in ``log``."""

    config: Path
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    extra_logs: list[Path] = field(default_factory=list)

    def start(self) -> "DaemonProcess":
        env = dict(os.environ, **self.env)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance.daemon", "--config", str(self.config)],
                                         env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        return self

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def produced(self) -> list[tuple[int, str]]:
        """(sequence, message id) of every score the daemon logged as made (and written to its outbox)."""
        return [(int(s), i) for s, i in SCORE_LINE.findall(self.text())]
