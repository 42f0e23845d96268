"""A bedside-monitor emulator on a real pseudo-terminal, for tests and the simulated bed.

It opens a pty (``os.openpty``), puts it in raw mode and speaks on the master side; the reader opens the
slave path with pyserial exactly as it would open ``/dev/ttyUSB0``. With ``link`` set, that path is a
symlink that survives ``close()``/``reopen()`` (a reopened pty gets a new /dev/pts number, like a USB
adapter re-enumerating), so reconnect logic can be tested end to end.

- ``protocol="masimo"``: one ASCII 1 line per (emulated) second.
- ``protocol="intellivue"``: answers the association request with an accept and an MDS create event,
  then answers numeric polls (HR, btb HR, pleth PR, SpO2, PI) and wave polls (ECG II at ``ecg_fs``, the
  samples accrued since the previous wave poll) from a synthetic ECG whose beats follow the emulated HR.

Time is emulated as ``speed`` x real time, so tests can run a minute of monitor in seconds. Values come
from a callable ``f(t_emulated_s) -> EmulatedVitals`` or from an iterator (one item per numeric
update), so a simulated bed can drive it. Everything written is recorded for tests to compare against.
"""

from __future__ import annotations

import itertools
import os
import select
import threading
import time
import tty
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.sources.monitor import intellivue_protocol as proto
from appliance.sources.monitor.intellivue_framing import Deframer, encode_frame
from appliance.sources.monitor.masimo import format_line
from appliance.sources.monitor.types import Rejection

ECG_SCALE = (-40.96, 40.955, 0, 16383)  # mV range <-> 14-bit counts, 5 uV per count
WAVE_HANDLE = 0x0101


@dataclass(frozen=True)
class EmulatedVitals:
    hr: float | None = 140.0
    spo2: float | None = 97.0
    pulse_rate: float | None = 140.0
    perfusion_index: float | None = 2.0
    exc: int = 0x800
    alarm: int = 0


ValueSource = Callable[[float], EmulatedVitals] | Iterator[EmulatedVitals]

# P, Q, R, S, T as (offset as a fraction of RR, amplitude mV, width s): a narrow neonatal complex
_WAVES = ((-0.22, 0.12, 0.020), (-0.03, -0.10, 0.006), (0.0, 1.0, 0.008), (0.03, -0.25, 0.008), (0.35, 0.25, 0.035))


def synthetic_ecg(beat_times_s: np.ndarray, rr_s: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """Lead-II-like ECG (mV) at times ``t_s``: Gaussian P-QRS-T around each beat (R peak at the beat time).

    ``rr_s[i]`` scales the P and T offsets of beat i; QRS offsets (Q, S) use a fixed 0.4 s reference so
    the R peak shape, hence the R location, does not depend on the rate.
    """
    out = np.zeros_like(t_s, dtype=np.float64)
    for beat, rr in zip(beat_times_s, rr_s):
        near = np.abs(t_s - beat) < 0.6
        if not np.any(near):
            continue
        dt = t_s[near] - beat
        for frac, amp, width in _WAVES:
            offset = frac * (rr if abs(frac) > 0.1 else 0.4)
            out[near] += amp * np.exp(-0.5 * ((dt - offset) / width) ** 2)
    return out


class MonitorEmulator:
    """Emulated monitor on a pty. ``start()``, read ``port``, ``close()``/``reopen()``, ``stop()``."""

    def __init__(
        self,
        protocol: str,
        values: ValueSource | None = None,
        speed: float = 1.0,
        link: str | os.PathLike | None = None,
        ecg_fs: float = 500.0,
        noise_mv: float = 0.0,
        seed: int = 0,
    ) -> None:
        if protocol not in ("masimo", "intellivue"):
            raise ValueError(f"protocol must be 'masimo' or 'intellivue', got {protocol!r}")
        self.protocol = protocol
        self.speed = speed
        self.link = Path(link) if link else None
        self.ecg_fs = ecg_fs
        self.noise_mv = noise_mv
        self._rng = np.random.default_rng(seed)
        self._values_fn = values if callable(values) else None
        self._values_it = iter(values) if values is not None and not callable(values) else None
        self._current = EmulatedVitals()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_path = ""
        self._t0 = time.monotonic()
        # records, for tests and the simulated bed
        self.sent_vitals: list[tuple[float, EmulatedVitals]] = []
        self.beat_times: list[float] = []
        self.associations = 0
        self.polls = 0
        self.dropped_bytes = 0
        self.rejects: list[Rejection] = []
        self._beat_rr: list[float] = []
        self._reset_session()

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> str:
        """The path to give pyserial (the stable symlink if one was requested)."""
        return str(self.link) if self.link else self._slave_path

    def now(self) -> float:
        """Emulated seconds since start."""
        return (time.monotonic() - self._t0) * self.speed

    def start(self) -> MonitorEmulator:
        self._open()
        self._thread = threading.Thread(target=self._run, name=f"emulator-{self.protocol}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.close()
        if self.link:
            self.link.unlink(missing_ok=True)

    def __enter__(self) -> MonitorEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def close(self) -> None:
        """Pull the cable: close the pty. The reader sees EIO / SerialException."""
        with self._lock:
            for fd in (self._master, self._slave):
                if fd is not None:
                    os.close(fd)
            self._master = self._slave = None
            self._reset_session()

    def reopen(self) -> None:
        """Plug back in: a fresh pty (new /dev/pts number) behind the same ``link``."""
        self.close()
        self._open()

    def inject(self, raw: bytes) -> None:
        """Write raw bytes (garbage, a corrupt frame) to the line."""
        self._write(raw)

    # --- internals -----------------------------------------------------------------------------
    def _open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line editing, before anyone writes
        os.set_blocking(master, False)
        path = os.ttyname(slave)
        if self.link:
            tmp = self.link.with_name(self.link.name + ".tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(path, tmp)
            os.replace(tmp, self.link)
        with self._lock:
            self._master, self._slave, self._slave_path = master, slave, path

    def _reset_session(self) -> None:
        self._deframer = Deframer()
        self._associated = False
        self._invoke = itertools.count(1)
        self._next_line = self.now() if hasattr(self, "_t0") else 0.0
        self._wave_from: int | None = None  # absolute ECG sample index of the next wave sample

    def _write(self, data: bytes) -> None:
        with self._lock:
            fd = self._master
            if fd is None:
                return
            view = memoryview(data)
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    self.dropped_bytes += len(view)  # nobody reading: a real UART drops too
                    return
                except OSError:
                    return
                view = view[n:]

    def _vitals(self, t: float, advance: bool) -> EmulatedVitals:
        if self._values_fn is not None:
            return self._values_fn(t)
        if advance and self._values_it is not None:
            self._current = next(self._values_it, self._current)
        return self._current

    def _run(self) -> None:
        while not self._stop.is_set():
            fd = self._master
            if fd is None:
                time.sleep(0.01)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.01)
                data = os.read(fd, 65536) if ready else b""
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            if data and self.protocol == "intellivue":
                for item in self._deframer.feed(data):
                    if isinstance(item, Rejection):
                        self.rejects.append(item)
                    else:
                        self._handle(proto.decode_message(item))
            if self.protocol == "masimo":
                self._masimo_tick()

    def _masimo_tick(self) -> None:
        now = self.now()
        while self._next_line <= now:
            t = self._next_line
            v = self._vitals(t, advance=True)
            self.sent_vitals.append((t, v))
            self._write(format_line(v.spo2, v.pulse_rate, v.perfusion_index, v.exc, v.alarm))
            self._next_line += 1.0

    def _handle(self, msg: object) -> None:
        rel = int(self.now() * proto.RELATIVE_TIME_HZ) & 0xFFFFFFFF
        if isinstance(msg, Rejection):
            self.rejects.append(msg)
        elif isinstance(msg, proto.AssociationRequest):
            self._associated = False
            self._write(encode_frame(proto.encode_association_result(True)))
            self._write(encode_frame(proto.encode_mds_create_event(next(self._invoke), rel)))
        elif isinstance(msg, proto.MdsCreateResult):
            self._associated = True
            self.associations += 1
            self._wave_from = None
        elif isinstance(msg, proto.ReleaseRequest):
            self._associated = False
            self._write(encode_frame(proto.encode_release_response()))
        elif isinstance(msg, proto.PollRequest) and self._associated:
            self.polls += 1
            if msg.obj_class == proto.NOM_MOC_VMO_METRIC_NU:
                self._write(encode_frame(self._numeric_reply(msg, rel)))
            elif msg.obj_class == proto.NOM_MOC_VMO_METRIC_SA_RT:
                self._write(encode_frame(self._wave_reply(msg, rel)))

    def _numeric_reply(self, msg: proto.PollRequest, rel: int) -> bytes:
        t = self.now()
        v = self._vitals(t, advance=True)
        self.sent_vitals.append((t, v))
        bpm, pct = proto.NOM_DIM_BEAT_PER_MIN, proto.NOM_DIM_PERCENT
        rr = self._beat_rr[-1] if self._beat_rr else None
        observations = [
            (0x0010, [proto.nu_obs_attr(proto.NOM_ECG_CARD_BEAT_RATE, v.hr, bpm)]),
            (0x0011, [proto.nu_obs_attr(proto.NOM_ECG_CARD_BEAT_RATE_BTB, 60.0 / rr if rr else None, bpm)]),
            (0x0012, [proto.nu_obs_attr(proto.NOM_PLETH_PULS_RATE, v.pulse_rate, bpm)]),
            (0x0013, [proto.nu_obs_attr(proto.NOM_PULS_OXIM_SAT_O2, v.spo2, pct)]),
            (0x0014, [proto.nu_obs_attr(proto.NOM_PULS_OXIM_PERF_REL, v.perfusion_index, pct)]),
        ]
        return proto.encode_poll_reply(msg.invoke_id, msg.poll_number, rel, msg.obj_class, observations,
                                       extended=msg.extended)

    def _extend_beats(self, until: float) -> None:
        while not self.beat_times or self.beat_times[-1] < until + 1.0:
            last = self.beat_times[-1] if self.beat_times else 0.3
            hr = self._vitals(last, advance=False).hr or 140.0
            rr = 60.0 / hr
            self.beat_times.append(last + rr if self.beat_times else last)
            self._beat_rr.append(rr)

    def ecg(self, start: int, stop: int) -> np.ndarray:
        """Emulated ECG (mV) for absolute sample indices [start, stop)."""
        t = np.arange(start, stop) / self.ecg_fs
        self._extend_beats(t[-1] if len(t) else 0.0)
        beats = np.asarray(self.beat_times)
        rr = np.asarray(self._beat_rr)
        sel = (beats > t[0] - 1.0) & (beats < t[-1] + 1.0) if len(t) else np.zeros(0, bool)
        mv = synthetic_ecg(beats[sel], rr[sel], t)
        if self.noise_mv:
            mv = mv + self._rng.normal(0.0, self.noise_mv, len(t))
        return mv

    def _wave_reply(self, msg: proto.PollRequest, rel: int) -> bytes:
        now_idx = int(self.now() * self.ecg_fs)
        start = self._wave_from if self._wave_from is not None else max(0, now_idx - int(0.25 * self.ecg_fs))
        start = max(start, now_idx - int(2 * self.ecg_fs))  # a real monitor buffers only so much
        self._wave_from = now_idx
        lo, hi, lo_s, hi_s = ECG_SCALE
        mv = self.ecg(start, now_idx)
        counts = np.clip(np.round((mv - lo) / (hi - lo) * (hi_s - lo_s) + lo_s), lo_s, hi_s).astype(np.uint16)
        attrs = proto.wave_attrs(proto.NLS_NOM_ECG_ELEC_POTL_II, proto.NOM_ECG_ELEC_POTL_II, counts,
                                 self.ecg_fs, ECG_SCALE)
        return proto.encode_poll_reply(msg.invoke_id, msg.poll_number, rel, msg.obj_class,
                                       [(WAVE_HANDLE, attrs)], extended=msg.extended)
