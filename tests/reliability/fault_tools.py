"""Fault injectors and the test rig for ``test_faults.py``: the daemon as a subprocess against a real broker
and the simulated bed, with every fault made by something the test owns.

Why these injectors and not mocks: each one breaks a *real* path the daemon uses, from the outside, the
way the fault happens at a cot side --

- :class:`TcpProxy` sits between daemon and broker: ``refuse`` is a blocked port (live connections reset,
  new ones refused), ``blackhole`` is a cable cut behind a switch (the TCP connection stays up but no byte
  passes either way, so only MQTT keepalive can notice).
- :class:`PausableAlsaFeed` is the ALSA ``file`` plugin's infile (a FIFO) for the daemon's microphone:
  ``pause()`` drains it and stops writing, so the capture delivers nothing (a device that went away).
- :class:`FifoCamera` is the camera: the bed's video as a YUV4MPEG2 stream through a FIFO that can be
  unplugged (stream ends, node deleted) and plugged back.
- :class:`GarbageLine` takes over the monitor's stable serial path with a pty that speaks random bytes.
- :func:`build_wall_clock_shim` compiles an LD_PRELOAD shim that steps one process's wall clock.
- :class:`Rig` runs broker, proxy, subscriber, bed and daemon processes, and does the counting: a score
  counts as *produced* when the daemon logs ``score seq=N id=UUID`` (after the outbox commit) and as
  *delivered* when a persistent QoS 1 subscriber received that id; lost = produced - delivered.
"""
from __future__ import annotations

import os
import pty
import random
import re
import select
import shutil
import socket
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from appliance.devtools.simulate import PcmPipeFeeder, write_alsa_file_config
from appliance.sources.microphone import wait_until as _wait_until
from tests.appliance.daemon_harness import DaemonProcess, NotifySocket

FAULT_PCM = "neopain_fault_mic"


# ------------------------------------------------------------------------------------------------- network
class TcpProxy:
    """A TCP forwarder on 127.0.0.1 owned by the test: the daemon's "network" to the broker.

    Modes: ``forward`` (normal), ``refuse`` (listener closed and live connections reset: connection
    refused, like a blocked port), ``blackhole`` (connections accepted and kept, every byte swallowed).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode = "forward"
        self._lock = threading.Lock()
        self._conns: list[tuple[socket.socket, socket.socket | None]] = []
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()
        self._listen()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)
        self._accept_thread.start()

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        s.settimeout(0.1)
        with self._lock:
            self._listener = s

    def set_mode(self, mode: str) -> None:
        if mode not in ("forward", "refuse", "blackhole"):
            raise ValueError(f"TcpProxy.set_mode: unknown mode {mode!r}")
        with self._lock:
            old, self.mode = self.mode, mode
            listener = self._listener
        if mode == "refuse":
            if listener is not None:
                with self._lock:
                    self._listener = None
                listener.close()
            self._reset_all()
        elif old == "refuse":
            self._listen()
        if mode == "forward" and old == "blackhole":
            self._reset_all()  # a path that comes back does not resurrect sessions the peers gave up on

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for pair in conns:
            for s in pair:
                if s is None:
                    continue
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    s.close()  # linger 0: RST, as a dropped route eventually gives
                except OSError:
                    pass

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                time.sleep(0.05)
                continue
            try:
                client, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            upstream = None
            if self.mode == "forward":
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                except OSError:
                    client.close()  # broker down: the daemon sees the connection drop, as without a proxy
                    continue
            with self._lock:
                self._conns.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket | None) -> None:
        peers = {client: upstream, upstream: client} if upstream is not None else {client: None}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    other = peers[s]
                    if self.mode == "forward" and other is not None:
                        other.sendall(data)
                    # blackhole: swallowed
        except (OSError, ValueError):
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass
            with self._lock:
                self._conns = [c for c in self._conns if c[0] is not client]

    def close(self) -> None:
        self._stop.set()
        self._reset_all()
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._accept_thread.join(2)


# ------------------------------------------------------------------------------------------------- ALSA
class PausableAlsaFeed(PcmPipeFeeder):
    """The simulated bed's FIFO feeder for the ALSA file plugin, with a plug: ``pause()`` / ``resume()``.

    A small pipe (64 KiB, 2 s of audio) so a pause starves the capture quickly; ``pause()`` also drains
    what is buffered, so the daemon's ``pcm.read()`` blocks like a capture device that delivers nothing.
    """

    def __init__(self, workdir: Path, pcm: np.ndarray) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        fifo = workdir / "fault-mic.fifo"
        fifo.unlink(missing_ok=True)
        self.paused = threading.Event()
        super().__init__(fifo, pcm, pipe_bytes=65536)
        self.alsa_config = write_alsa_file_config(workdir / "fault-asound.conf", fifo.resolve(), FAULT_PCM)

    def _fill(self) -> None:
        if self.paused.is_set():
            self._stop.wait(0.05)  # select says "writable" at once: do not spin
            return
        super()._fill()

    def pause(self) -> int:
        """Stop writing and drain the pipe; returns the bytes drained."""
        self.paused.set()
        time.sleep(0.1)  # let a _fill in progress finish
        drained = 0
        while True:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return drained
            if not chunk:
                return drained
            drained += len(chunk)

    def resume(self) -> None:
        self.paused.clear()


# ------------------------------------------------------------------------------------------------- camera
class FifoCamera:
    """The bed's video as a live stream the test can unplug: YUV4MPEG2 through a FIFO, opened by the
    daemon's camera (kind ``file``) through OpenCV/FFmpeg like the bed's video file.

    Why not the bed's file itself: an open file cannot be made to vanish (an unlinked or truncated file
    stays readable from the open descriptor and FFmpeg's buffer, so the camera keeps decoding damaged frames
    or not, by chance). A stream that stops is what a camera that goes away looks like: reads fail, the
    camera reopens, the path is gone, it retries with backoff until the device is back.
    """

    def __init__(self, video: Path, path: Path, max_frames: int = 200) -> None:
        import cv2

        cap = cv2.VideoCapture(str(video))
        frames = []
        while len(frames) < max_frames:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).tobytes())
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 10.0)
        height, width = image.shape[:2] if frames else (0, 0)
        cap.release()
        if not frames:
            raise ValueError(f"FifoCamera: no frames in {video}")
        num, den = (int(round(self.fps * 1000)), 1000)
        self._header = f"YUV4MPEG2 W{width} H{height} F{num}:{den} Ip A1:1 C420jpeg\n".encode()
        self._data = b"".join(b"FRAME\n" + f for f in frames)
        self.path = Path(path)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def plug(self) -> "FifoCamera":
        """Create the device node and stream (header first, then the frames round and round)."""
        self.path.unlink(missing_ok=True)
        os.mkfifo(self.path, 0o600)
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)  # never blocks on a missing reader
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(self._fd,), name="fifo-camera", daemon=True)
        self._thread.start()
        return self

    def _run(self, fd: int) -> None:
        pending, pos = self._header, 0
        while not self._stop.is_set():
            if not pending:  # next chunk of the frames, wrapping at the end (a short chunk, then from 0)
                pending = self._data[pos:pos + 65536]
                pos = (pos + len(pending)) % len(self._data)
            try:
                _, writable, _ = select.select([], [fd], [], 0.1)
            except (OSError, ValueError):
                return
            if writable:
                try:
                    pending = pending[os.write(fd, pending):]
                except BlockingIOError:
                    continue
                except OSError:
                    return

    def unplug(self) -> None:
        """The device goes away: the stream ends (the reader sees end of file) and the node disappears."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- serial
class GarbageLine:
    """A pty that speaks random bytes, put behind the monitor's stable path (the monitor swapped for a
    device on the wrong baud rate / a broken one). ``restore`` gives the path back to the emulator."""

    def __init__(self, link: Path, rate_bytes_s: int = 960, seed: int = 0) -> None:
        self.link = Path(link)
        self.rate = rate_bytes_s
        self._rng = random.Random(seed)
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.sent = 0
        self._stop = threading.Event()
        tmp = self.link.with_name(self.link.name + ".garbage")
        tmp.unlink(missing_ok=True)
        os.symlink(os.ttyname(self.slave), tmp)
        os.replace(tmp, self.link)
        self._thread = threading.Thread(target=self._run, name="garbage-line", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            chunk = bytes(self._rng.randrange(256) for _ in range(self.rate // 10))
            if self._rng.random() < 0.3:
                chunk += b"\nSPO2=%%%\xff=\n"  # near-miss lines too, not only noise
            try:
                self.sent += os.write(self.master, chunk)
            except OSError:
                pass  # nobody reading: a UART drops

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


# ------------------------------------------------------------------------------------------------- the rig
def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll every 0.1 s (predicates here re-read the daemon's log: no need to spin faster)."""
    return _wait_until(predicate, timeout, poll_s=0.1)


@dataclass
class Rig:
    """Broker + proxy + persistent subscriber + simulated bed + daemon processes, and the counting."""

    tmp: Path
    broker: Any
    sub: Any
    bed: Any
    proxy: TcpProxy
    notify: NotifySocket
    config: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    daemons: list[DaemonProcess] = field(default_factory=list)
    feed: PausableAlsaFeed | None = None  # the microphone's ALSA infile
    camera: FifoCamera | None = None  # the camera device the test can unplug
    base_sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # config every daemon gets

    # -- daemon --------------------------------------------------------------------------------------
    def write_config(self, model_dir: Path, **sections: dict[str, Any]) -> Path:
        """The bed's appliance TOML with the rig's defaults, :attr:`base_sections`, then ``sections``."""
        merged: dict[str, dict[str, Any]] = {
            "device": {"id": "fault-dev", "site": "rel", "bed": "bed-1"},
            "mqtt": {"host": "127.0.0.1", "port": self.proxy.port, "message_expiry_s": 600,
                     "health_interval_s": 2.0, "keepalive_s": 5},
            # Health's debounce (modality lost/back after lasting a while) shortened to two 1-s windows, so a
            # fault's phase (10 s) shows it; the rows measure how soon a fault reaches health through it.
            "scoring": {"model_dir": str(model_dir), "model_config": "tiny", "backends": ["onnxruntime"],
                        "cadence_s": 1.0, "modality_lost_after_s": 2.0, "modality_back_after_s": 2.0},
            "calibration": {"bundle": ""},
        }
        for name, values in [*self.base_sections.items(), *sections.items()]:
            merged.setdefault(name, {}).update(values)
        self.config = self.bed.write_appliance_config(self.tmp / "appliance.toml", **merged)
        return self.config

    def start_daemon(self, ready_timeout: float = 90.0, expect_ready: bool = True) -> DaemonProcess:
        assert self.config is not None
        before = self.notify.assignments("READY").count("1")
        env = {"NOTIFY_SOCKET": self.notify.path, "WATCHDOG_USEC": "10000000", **self.env}
        d = DaemonProcess(self.config, self.tmp / f"daemon{len(self.daemons) + 1}.log", env).start()
        self.daemons.append(d)
        if expect_ready:
            ok = self.notify.wait_for(lambda n: n.assignments("READY").count("1") > before
                                      or d.proc.poll() is not None, ready_timeout)
            assert ok and d.proc.poll() is None, f"daemon not ready:\n{d.text()[-3000:]}"
        return d

    @property
    def daemon(self) -> DaemonProcess:
        return self.daemons[-1]

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def log_count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.daemon.text()))

    # -- counting ------------------------------------------------------------------------------------
    def produced(self) -> list[str]:
        return [i for d in self.daemons for _, i in d.produced()]

    def delivered(self) -> set[str]:
        return {m.json()["message_id"] for m in self.sub.on_topic("/score")}

    def scores(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on_topic("/score")]

    def wait_produced(self, n: int, timeout: float) -> None:
        ok = wait_until(lambda: len(self.produced()) >= n or not self.alive(), timeout)
        assert ok and self.alive(), f"expected {n} scores, have {len(self.produced())}:\n{self.daemon.text()[-3000:]}"

    def wait_more(self, k: int, timeout: float) -> None:
        self.wait_produced(len(self.produced()) + k, timeout)

    def wait_delivered(self, ids: list[str] | None = None, timeout: float = 60.0) -> set[str]:
        """Wait until every id of ``ids`` (default: all produced) was received; returns the missing ones."""
        want = set(self.produced() if ids is None else ids)
        wait_until(lambda: want <= self.delivered(), timeout)
        return want - self.delivered()

    # -- health and status ---------------------------------------------------------------------------
    def health(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on_topic("/health")]

    def wait_health(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, since: int = 0) -> dict | None:
        """The first health message (index >= ``since``) matching ``predicate``, or None after ``timeout``."""
        found: list[dict] = []

        def check() -> bool:
            found[:] = [h for h in self.health()[since:] if predicate(h)]
            return bool(found)

        wait_until(check, timeout)
        return found[0] if found else None

    def statuses(self) -> list[str]:
        return [m.payload.decode() for m in self.sub.on_topic("/status")]

    def close(self) -> None:
        for d in self.daemons:
            d.kill()
        self.proxy.close()
        self.notify.close()


def corrupt_file(path: Path, seed: int = 0) -> None:
    """Overwrite 64 bytes in the middle of ``path`` with random bytes (a torn write, a bad flash block)."""
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    mid = len(data) // 2
    for i in range(mid, min(mid + 64, len(data))):
        data[i] = rng.randrange(256)
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------- wall clock
#: An LD_PRELOAD shim that adds an offset (seconds, read from ``$NEOPAIN_WALL_OFFSET_FILE`` at most every
#: 50 ms) to CLOCK_REALTIME, gettimeofday() and time() of one process; CLOCK_MONOTONIC is untouched.
#: Why not libfaketime: 0.9.10 (Debian 12) breaks Python 3.11's time.sleep() when the monotonic clock is
#: excluded (clock_nanosleep with TIMER_ABSTIME gets a negative time: EINVAL; wolfcw/libfaketime#426), and
#: faking the monotonic clock too would not be a wall-clock jump. The machine's own clock is shared and
#: must not be stepped, so the jump is made inside the daemon process only.
WALL_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static volatile long long offset_ns, next_read_ns;

static long long current_offset(void) {
    struct timespec m;
    real_clock_gettime(CLOCK_MONOTONIC, &m);
    long long now = m.tv_sec * 1000000000LL + m.tv_nsec;
    if (now >= next_read_ns) {
        next_read_ns = now + 50000000LL;
        const char *path = getenv("NEOPAIN_WALL_OFFSET_FILE");
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            char buf[64] = {0};
            if (read(fd, buf, sizeof buf - 1) > 0) offset_ns = (long long)(strtod(buf, NULL) * 1e9);
            close(fd);
        }
    }
    return offset_ns;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real_clock_gettime(clock, ts);
    if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long t = ts->tv_sec * 1000000000LL + ts->tv_nsec + current_offset();
        ts->tv_sec = t / 1000000000LL;
        ts->tv_nsec = t % 1000000000LL;
    }
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (tv) { tv->tv_sec = ts.tv_sec; tv->tv_usec = ts.tv_nsec / 1000; }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build_wall_clock_shim(workdir: Path) -> Path | None:
    """Compile :data:`WALL_SHIM_C` with the system C compiler; None when there is none."""
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    src, lib = workdir / "wallshift.c", workdir / "libwallshift.so"
    src.write_text(WALL_SHIM_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"], check=True,
                   capture_output=True, timeout=60)
    return lib


# ------------------------------------------------------------------------------------------------- state files
PAGE_SIZE = 4096  # SQLite's default page size, which the outbox and the sessions store use


def checkpoint(path: Path) -> None:
    """Move the WAL into the main file from another connection (as SQLite's auto-checkpoint does), so bytes
    written over the main file are what the daemon reads next."""
    import sqlite3

    db = sqlite3.connect(path, timeout=10)  # waits (busy handler) for the daemon's short write transactions
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        db.close()
    if busy:
        raise RuntimeError(f"checkpoint of {path} could not complete within 10 s")


def pages_holding(path: Path, needle: bytes) -> list[int]:
    """The page numbers (0-based) of ``path`` whose bytes contain ``needle``."""
    data, found, at = path.read_bytes(), set(), 0
    while needle and (at := data.find(needle, at)) >= 0:
        found.add(at // PAGE_SIZE)
        at += 1
    return sorted(found)


def overwrite_page(path: Path, page: int, seed: int = 0) -> bytes:
    """4 KB of random bytes over one page of ``path`` (a torn write, a bad flash block); returns the old bytes."""
    rng = random.Random(seed)
    with open(path, "r+b") as fh:
        fh.seek(page * PAGE_SIZE)
        old = fh.read(PAGE_SIZE)
        fh.seek(page * PAGE_SIZE)
        fh.write(bytes(rng.randrange(256) for _ in range(PAGE_SIZE)))
    return old


def truncate_half(path: Path) -> int:
    """Cut ``path`` to half its size (a file system that lost the tail); returns the new size."""
    size = path.stat().st_size // 2
    with open(path, "r+b") as fh:
        fh.truncate(size)
    return size
