"""MonitorReader: owns one serial port to a patient monitor, its protocol, reconnects and health.

One thread per monitor. It opens the port with pyserial (a device path or any pyserial URL), works out
the protocol if asked to (``auto``), and pushes ``VitalSample``, ``WaveChunk`` and ``RRIntervals`` to the
sink callback. Bytes that cannot be used are counted by reason, never raised.

When the port goes away (pyserial raises SerialException after the other end of a pty closes, or an
OSError such as EIO on a USB adapter) the reader reports ``connected=False``, waits with exponential
backoff and reopens; an IntelliVue is re-associated from scratch on every reopen. Any other exception
(a bug, a library surprise) ends the session too: the thread is supervised
(:mod:`appliance.sources.supervise`), logged, restarted with the same backoff and counted in
``MonitorHealth.thread_restarts``.

Auto-detection: a Masimo talks unprompted (a line a second), an IntelliVue says nothing until
associated. So ``auto`` listens for ``detect_s``: an ASCII line with ``KEY=value`` tokens means Masimo,
a 0xC0 frame start means IntelliVue; silence means "try IntelliVue" (send the association request,
which a Masimo ignores) and, if nothing answers either, listen again. Both run at the configured baud
rate; the reader does not hunt across baud rates. The Masimo line that settled the question is parsed and
delivered like every later one, stamped when it arrived.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import serial

from appliance.sources.supervise import SupervisedThread

from . import masimo
from .intellivue import IntelliVueClient
from .rpeaks import StreamingRPeakDetector
from .types import MonitorHealth, RejectCounter, Rejection, RRIntervals, VitalSample, WaveChunk, now_ns

log = logging.getLogger(__name__)

Sink = Callable[[VitalSample | WaveChunk | RRIntervals], None]
DEFAULT_BAUD = {"masimo": 9600, "intellivue": 115200, "auto": 115200}
#: Rejected input is journalled at once, then at most once per this many seconds (a monitor speaking
#: garbage for an hour must say so without writing a line per byte).
REJECT_LOG_INTERVAL_S = 30.0
ECG_LABEL = "ECG_II"


class _Disconnected(Exception):
    """The session ended in a way that calls for a reopen (no answer, refused association)."""


class MonitorReader:
    def __init__(
        self,
        port: str,
        sink: Sink,
        protocol: str = "auto",
        baudrate: int | None = None,
        numeric_period_s: float = 1.0,
        wave_period_s: float = 0.25,
        waves: bool = True,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        answer_timeout_s: float = 5.0,
        detect_s: float = 2.5,
        read_timeout_s: float = 0.02,
    ) -> None:
        if protocol not in ("masimo", "intellivue", "auto"):
            raise ValueError(f"protocol must be 'masimo', 'intellivue' or 'auto', got {protocol!r}")
        self.port = port
        self.sink = sink
        self.protocol = protocol
        self.baudrate = baudrate or DEFAULT_BAUD[protocol]
        self.numeric_period_s = numeric_period_s
        self.wave_period_s = wave_period_s
        self.waves = waves
        self.backoff_s = backoff_s
        self.answer_timeout_s = answer_timeout_s
        self.detect_s = detect_s
        self.read_timeout_s = read_timeout_s
        self.rejects = RejectCounter()
        self._health = MonitorHealth()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: SupervisedThread | None = None
        self._serial: serial.Serial | None = None
        self._rpeaks: StreamingRPeakDetector | None = None
        self._reject_logged_at: float | None = None
        self._rejects_unlogged = 0

    # --- public ------------------------------------------------------------------------------
    def start(self) -> MonitorReader:
        self._stop.clear()
        self._thread = SupervisedThread(f"monitor-{self.port}", self._run, keep_running=lambda: not self._stop.is_set(),
                                        wait=self._stop.wait, backoff_s=self.backoff_s,
                                        on_crash=self._crashed).start()
        return self

    def _crashed(self, exc: BaseException) -> None:
        """The reader thread died (the supervisor logged it and restarts it): count it, say why."""
        with self._lock:
            self._health.thread_restarts += 1
            self._health.connected = False
            self._health.associated = False
            self._health.last_error = f"driver thread died: {type(exc).__name__}: {exc}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close the port; returns once the thread has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"monitor reader for {self.port} did not stop within {timeout} s")
            self._thread = None

    def __enter__(self) -> MonitorReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self) -> MonitorHealth:
        with self._lock:
            snapshot = MonitorHealth(**vars(self._health))
        snapshot.rejects = dict(self.rejects)
        return snapshot

    # --- loop ----------------------------------------------------------------------------------
    def _set(self, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self._health, key, value)

    def _run(self) -> None:
        delay = self.backoff_s[0]
        while not self._stop.is_set():
            try:
                self._serial = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=self.read_timeout_s)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._set(last_error=f"open: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
                continue
            with self._lock:
                self._health.connected = True
                self._health.connects += 1
            had_data = False
            try:
                had_data = self._session()
            except (serial.SerialException, OSError, _Disconnected) as exc:
                log.info("monitor %s disconnected: %s", self.port, exc)
                self._set(last_error=f"{type(exc).__name__}: {exc}")
            finally:
                try:
                    self._serial.close()
                except (serial.SerialException, OSError):
                    pass
                self._serial = None
                with self._lock:
                    if self._health.connected:
                        self._health.disconnects += 1
                    self._health.connected = False
                    self._health.associated = False
            if had_data:
                delay = self.backoff_s[0]
            if not self._stop.is_set():
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_s[1])
        self._set(connected=False)

    def _session(self) -> bool:
        """Run one connection; returns whether any data came through. Raises to request a reopen."""
        protocol, pending, requested, pending_t = self.protocol, b"", False, now_ns()
        if protocol == "auto":
            protocol, pending, requested, pending_t = self._detect()
            if protocol is None:
                return False
        self._set(protocol=protocol)
        if protocol == "masimo":
            return self._masimo(pending, pending_t)
        return self._intellivue(pending, requested)

    def _read(self) -> bytes:
        assert self._serial is not None
        return self._serial.read(max(1, self._serial.in_waiting))

    def _reject(self, rejection: Rejection) -> None:
        self.rejects.add(rejection)
        log.debug("monitor %s rejected: %s %s", self.port, rejection.reason, rejection.detail)
        self._rejects_unlogged += 1
        now = time.monotonic()
        if self._reject_logged_at is None or now - self._reject_logged_at >= REJECT_LOG_INTERVAL_S:
            log.warning("monitor %s: rejecting input (%d since the last report; latest: %s %s)", self.port,
                        self._rejects_unlogged, rejection.reason, str(rejection.detail)[:120])
            self._reject_logged_at, self._rejects_unlogged = now, 0

    def _emit(self, item: VitalSample | WaveChunk | RRIntervals) -> None:
        with self._lock:
            if isinstance(item, VitalSample):
                self._health.samples += 1
                self._health.last_sample_mono_ns = item.t_mono_ns
            elif isinstance(item, WaveChunk):
                self._health.wave_chunks += 1
            else:
                self._health.beats += len(item.rr_ms)
        try:
            self.sink(item)
        except Exception:  # a faulty consumer must not stop acquisition
            log.exception("monitor sink failed")

    def _detect(self) -> tuple[str | None, bytes, bool, int]:
        """Listen, then prod (see the module docstring).

        Returns (protocol, bytes to replay, AARQ sent, arrival stamp of those bytes). The bytes that made
        the decision are handed on, not dropped: a Masimo line that identified the monitor is a reading
        like any other (dropping it cost about a second of vitals per connect).
        """
        seen, seen_t = b"", now_ns()
        deadline = time.monotonic() + self.detect_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            chunk = self._read()
            if not chunk:
                continue
            seen, seen_t = (seen + chunk)[-4096:], now_ns()
            if b"\xc0" in seen:
                return "intellivue", b"", False, seen_t  # frames from an earlier association: start over
            start = _first_masimo_line(seen)
            if start is not None:
                return "masimo", seen[start:], False, seen_t
        if self._stop.is_set():
            return None, b"", False, seen_t
        # silence (or noise): try the IntelliVue association request, which a Masimo ignores
        assert self._serial is not None
        for frame in IntelliVueClient().start():
            self._serial.write(frame)
        seen = b""
        deadline = time.monotonic() + self.answer_timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            chunk = self._read()
            if chunk:
                seen, seen_t = (seen + chunk)[-4096:], now_ns()
            if b"\xc0" in seen:
                return "intellivue", seen[seen.index(b"\xc0") :], True, seen_t  # the answer: keep it
            if b"=" in seen and b"\n" in seen:  # KEY=value lines, even unusable ones: the parser counts them
                start = _first_masimo_line(seen)
                return "masimo", seen if start is None else seen[start:], False, seen_t
        self._reject(Rejection("no_protocol", f"nothing recognisable within {self.detect_s + self.answer_timeout_s:.1f} s"))
        return None, b"", False, seen_t

    def _masimo(self, pending: bytes, pending_t: int) -> bool:
        """Read Masimo lines; ``pending`` (bytes already received, stamped ``pending_t``) are parsed first."""
        buf, had_data = b"", False
        chunk, t = pending, pending_t
        while not self._stop.is_set():
            buf += chunk
            *lines, buf = buf.split(b"\n")
            if len(buf) > masimo.MAX_LINE:
                self._reject(Rejection("line_too_long", f"{len(buf)} bytes without a newline"))
                buf = b""
            for line in lines:
                result = masimo.parse_line(line, t)
                if isinstance(result, Rejection):
                    self._reject(result)
                else:
                    had_data = True
                    self._emit(result)
            chunk = self._read()
            t = now_ns()
        return had_data

    def _intellivue(self, pending: bytes, requested: bool = False) -> bool:
        assert self._serial is not None
        client = IntelliVueClient(int(self.numeric_period_s * 1e9), int(self.wave_period_s * 1e9), self.waves)
        request = client.start()
        if not requested:
            for frame in request:
                self._serial.write(frame)
        self._rpeaks = None
        attempts = 1
        last_rx = time.monotonic()
        had_data = False
        chunk = pending
        while not self._stop.is_set():
            if chunk:
                step = client.feed(chunk, now_ns())
                for rejection in step.rejects:
                    self._reject(rejection)
                for frame in step.send:
                    self._serial.write(frame)
                for item in step.out:
                    had_data = True
                    last_rx = time.monotonic()
                    self._emit(item)
                    if isinstance(item, WaveChunk) and item.label == ECG_LABEL:
                        self._beats(item)
                if client.state == "refused":
                    raise _Disconnected("association refused")
                if client.state == "idle":
                    raise _Disconnected("monitor released or aborted the association")
                if client.ready:
                    self._set(associated=True)
            for frame in client.due_polls(now_ns()):
                self._serial.write(frame)
            if time.monotonic() - last_rx > self.answer_timeout_s:
                if client.ready or attempts >= 3:
                    raise _Disconnected(f"no answer within {self.answer_timeout_s} s")
                # ask again on the same port: the monitor may have been busy or just powered on
                attempts += 1
                for frame in client.start():
                    self._serial.write(frame)
                last_rx = time.monotonic()
            chunk = self._read()
        return had_data

    def _beats(self, chunk: WaveChunk) -> None:
        if len(chunk.samples) == 0:
            return
        if self._rpeaks is None or self._rpeaks.fs != chunk.fs_hz:
            self._rpeaks = StreamingRPeakDetector(chunk.fs_hz)
        times, rr = self._rpeaks.feed(chunk.samples, chunk.t_mono_ns)
        if len(times):
            self._emit(RRIntervals(chunk.t_mono_ns, times, rr, chunk.source))


def _first_masimo_line(seen: bytes) -> int | None:
    """Offset of the first complete line in ``seen`` that parses as a Masimo reading, else None."""
    offset = 0
    for line in seen.split(b"\n")[:-1]:
        if isinstance(masimo.parse_line(line), VitalSample):
            return offset
        offset += len(line) + 1
    return None
