"""The simulated bed (``neopain simulate-bed``): a recorded (synthetic) infant played into the appliance's
*real* input paths, so the whole device program can run on a desk without a camera, microphone or monitor.

Why through the real paths rather than fake sources: the point is to exercise exactly the code that runs at
a cot side -- OpenCV opening a file, ALSA opening a PCM through pyalsaaudio, pyserial opening a tty and
parsing a monitor's wire protocol -- so a simulated run finds the same bugs a clinical one would.

- **Camera**: the recording's own video file; the appliance's Camera opens it as a file source, paced at
  the file's frame rate (times ``speed``) and looping.
- **Microphone**: the recording's audio, resampled to 16 kHz mono S16_LE (``scipy.signal.resample_poly``),
  served through ALSA's ``file`` plugin (``pcm type file; infile ...; slave null``) under a PCM name of its
  own, defined in an ALSA config the appliance selects with ``ALSA_CONFIG_PATH``. The file plugin is not
  paced and returns zeros after end of file (see ../shared/reference.md), so the Microphone paces itself
  (``MicrophoneConfig(pace_realtime=True)``). With ``loop=True`` the ``infile`` is a named pipe that a
  feeder thread keeps full with the PCM, round and round: the loop never ends and no file grows. The bed
  holds the pipe open for reading *and* writing, so the reader never sees end of file, and writes only
  whole atomic 4 KiB blocks, so a read never finds part of a period (the file plugin completes a short
  read with stale bytes and shifts the stream: see :class:`PcmPipeFeeder`). With ``loop=False`` the
  ``infile`` is the PCM file itself, played once.
- **Monitor**: a pty pair on which :class:`~appliance.devtools.monitor_emulator.MonitorEmulator` speaks Masimo
  ASCII 1 or IntelliVue MIB/RS232 in real time (times ``speed``), with HR/SpO2 from the recording's
  ``vitals.csv`` (sample-and-hold of its 1 Hz numerics) and, for IntelliVue, the ECG II wave from its
  ``ecg.npy``. The reader opens a stable symlink in the workdir, which survives the pty being reopened.

Time: bed time 0 is the first video frame; recording time = video start + bed time (modulo the loop length,
the video's duration). The PCM starts at the same recording time, so audio and video are aligned when the
appliance opens both together; the monitor runs on the bed's clock from :meth:`SimulatedBed.start`. Camera
and microphone start playing when the appliance opens them (a real camera does not wait, a file does), so
start the bed just before the appliance. ``speed`` scales the monitor's clock and the camera's frame rate;
audio is always played at real time (time-scaling it would move the cry's pitch out of the detector's band).

Privacy: the bed writes raw PCM (``mic.s16le``) and a named pipe into its workdir. This is synthetic data
from ``neopain synth`` (or whatever recording you point it at -- do not point it at patient recordings on a
shared machine); a workdir the bed created itself is deleted on :meth:`SimulatedBed.stop`.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import logging
import math
import os
import select
import shutil
import signal
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy.signal import resample_poly

from appliance.devtools.monitor_emulator import EmulatedVitals, MonitorEmulator
from appliance.sources.monitor.masimo import EXC_NORMAL_SET_MODE
from appliance.sources.monitor.reader import DEFAULT_BAUD
from models.data.layout import (AUDIO_FILE, ECG_FILES, RECORDING_FILE, SUBJECTS_FILE, VITALS_FILE, DatasetError,
                                find_video, load_audio, probe_video, read_ecg, read_recording_meta, read_vitals)

log = logging.getLogger(__name__)

PCM_RATE = 16000
PCM_FILE = "mic.s16le"
PCM_FIFO = "mic.fifo"
ALSA_CONFIG_FILE = "asound.conf"
SERIAL_LINK = "ttyBED"
DEFAULT_PCM_NAME = "neopain_bed"
SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"
EXC_SENSOR_OFF = 0x20  # Masimo EXC bit: what a Radical-7 reports when the probe is off the foot
HOLD_S = 2.0  # a numeric row older than this (gap in vitals.csv) is not shown as current
PROTOCOLS = ("masimo", "intellivue")


# ------------------------------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class BedRecording:
    """One recording, reduced to what the bed plays. Times ``*_s`` on the file's own clock unless named.

    ``pcm`` is the loop's audio at 16 kHz (int16), starting at the first video frame; ``loop_s`` is the
    video's duration, which is the loop length of every modality.
    """

    directory: Path
    video_path: Path
    video_fps: float
    video_size: tuple[int, int]  # (width, height)
    loop_s: float
    video_offset_s: float  # recording time of the first frame
    vitals_offset_s: float  # recording time = monitor time + this
    numerics_t_s: np.ndarray  # monitor clock, rows with HR and/or SpO2
    hr_bpm: np.ndarray  # NaN = empty cell
    spo2_pct: np.ndarray
    ecg_mv: np.ndarray | None
    ecg_rate_hz: float
    ecg_start_s: float | None  # monitor clock
    pcm: np.ndarray

    def recording_time(self, bed_t: float | np.ndarray, loop: bool = True) -> float | np.ndarray:
        """Recording time shown at bed time ``bed_t`` (wrapped into the loop when ``loop``)."""
        t = np.mod(bed_t, self.loop_s) if loop else bed_t
        return self.video_offset_s + t

    def monitor_time(self, bed_t: float | np.ndarray, loop: bool = True) -> float | np.ndarray:
        """The monitor's own clock (vitals.csv ``t_s``) at bed time ``bed_t``."""
        return self.recording_time(bed_t, loop) - self.vitals_offset_s

    def numerics_at(self, monitor_t: float) -> tuple[float | None, float | None]:
        """(HR, SpO2) the monitor displays at ``monitor_t``: the last row at or before it (sample and hold),
        None for an empty cell or when the last row is older than :data:`HOLD_S`."""
        i = int(np.searchsorted(self.numerics_t_s, monitor_t, side="right")) - 1
        if i < 0 or monitor_t - self.numerics_t_s[i] > HOLD_S:
            return None, None
        hr, spo2 = float(self.hr_bpm[i]), float(self.spo2_pct[i])
        return (None if math.isnan(hr) else hr), (None if math.isnan(spo2) else spo2)


def pcm_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """Float mono audio in [-1, 1] at ``rate`` -> int16 at 16 kHz (polyphase resampling, exact ratio)."""
    if rate != PCM_RATE:
        g = math.gcd(PCM_RATE, int(rate))
        audio = resample_poly(audio.astype(np.float64), PCM_RATE // g, int(rate) // g)
    return np.clip(np.round(np.asarray(audio, np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def _bed_pcm(audio16: np.ndarray, audio_offset_s: float, video_offset_s: float, loop_s: float) -> np.ndarray:
    """The 16 kHz audio from the first video frame for one loop, zero-padded where the audio does not reach."""
    n = int(round(loop_s * PCM_RATE))
    skip = int(round((video_offset_s - audio_offset_s) * PCM_RATE))  # audio samples before the first frame
    out = np.zeros(n, np.int16)
    src_lo, dst_lo = max(skip, 0), max(-skip, 0)
    count = max(0, min(n - dst_lo, audio16.size - src_lo))
    out[dst_lo:dst_lo + count] = audio16[src_lo:src_lo + count]
    return out


def resolve_recording(source: Path | str, subject: str | None = None, recording: str | None = None) -> Path:
    """A recording folder from either itself or a cohort root (+ subject, + recording; default: the first)."""
    source = Path(source)
    if (source / RECORDING_FILE).is_file():
        if subject is not None or recording is not None:
            raise ValueError(f"{source} is a recording folder: subject/recording apply to a cohort root only")
        return source
    if not (source / SUBJECTS_FILE).is_file():
        raise DatasetError(source, f"neither a recording folder ({RECORDING_FILE}) nor a cohort root "
                           f"({SUBJECTS_FILE})")

    def pick(parent: Path, name: str | None, what: str) -> Path:
        found = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        if name is None:
            if not found:
                raise DatasetError(parent, f"no {what} folders")
            return found[0]
        if not (parent / name).is_dir():
            raise DatasetError(parent / name, f"no such {what} (have: {', '.join(p.name for p in found)})")
        return parent / name

    return pick(pick(source, subject, "subject"), recording, "recording")


def load_bed_recording(directory: Path | str) -> BedRecording:
    """Read and check what the bed needs from one recording folder (models/data layout, docs/dataset.md)."""
    directory = Path(directory)
    meta = read_recording_meta(directory / RECORDING_FILE)
    video = probe_video(find_video(directory))
    loop_s = video.frame_count / video.fps
    audio, rate = load_audio(directory / AUDIO_FILE)
    vitals = read_vitals(directory / VITALS_FILE)
    numeric = ~(np.isnan(vitals.hr_bpm) & np.isnan(vitals.spo2_pct))
    if not numeric.any():
        raise DatasetError(directory / VITALS_FILE, "no HR or SpO2 rows: nothing for the monitor to show")
    ecg = None
    ecg_path = next((directory / n for n in ECG_FILES if (directory / n).exists()), None)
    if ecg_path is not None:
        ecg = read_ecg(ecg_path, meta)
    offsets = meta.clock_offsets_s
    v_off = offsets.get("video", 0.0)
    return BedRecording(
        directory=directory, video_path=video.path, video_fps=video.fps,
        video_size=(video.width, video.height), loop_s=loop_s, video_offset_s=v_off,
        vitals_offset_s=offsets.get("vitals", 0.0), numerics_t_s=vitals.t_s[numeric],
        hr_bpm=vitals.hr_bpm[numeric], spo2_pct=vitals.spo2_pct[numeric],
        ecg_mv=None if ecg is None else np.asarray(ecg.samples, np.float64),
        ecg_rate_hz=ecg.rate_hz if ecg is not None else 250.0,
        ecg_start_s=None if ecg is None else ecg.start_s,
        pcm=_bed_pcm(pcm_16k(audio, rate), offsets.get("audio", 0.0), v_off, loop_s),
    )


# ------------------------------------------------------------------------------------------------- monitor


class RecordingMonitorEmulator(MonitorEmulator):
    """A MonitorEmulator whose ECG II wave is the recording's own ECG (the base class draws one from HR).

    Emulated time is bed time; ECG sample ``i`` is at bed time ``i / ecg_fs``, mapped through the loop to the
    monitor clock of ``ecg.npy``. Outside the recorded ECG the lead reads a flat 0 mV (leads off).
    """

    def __init__(self, protocol: str, recording: BedRecording, loop: bool, **kwargs: Any) -> None:
        self.recording = recording
        self.loop = loop
        super().__init__(protocol, ecg_fs=recording.ecg_rate_hz, **kwargs)

    def ecg(self, start: int, stop: int) -> np.ndarray:
        rec = self.recording
        if rec.ecg_mv is None or rec.ecg_start_s is None:
            return super().ecg(start, stop)
        t_bed = np.arange(start, stop) / self.ecg_fs
        idx = np.round((rec.monitor_time(t_bed, self.loop) - rec.ecg_start_s) * rec.ecg_rate_hz).astype(np.int64)
        ok = (idx >= 0) & (idx < rec.ecg_mv.size)
        out = np.zeros(t_bed.shape, np.float64)
        out[ok] = rec.ecg_mv[idx[ok]]
        if not self.loop:
            out[t_bed >= rec.loop_s] = 0.0
        return out


# ------------------------------------------------------------------------------------------------- ALSA


def write_alsa_file_config(path: Path, infile: Path, pcm_name: str) -> Path:
    """An ALSA config: the system one, then ``pcm.<pcm_name>`` capturing from ``infile`` (file plugin)."""
    for bad in ('"', "\n", "}", "{"):
        if bad in str(infile) or bad in pcm_name:
            raise ValueError(f"write_alsa_file_config: {bad!r} not allowed in infile or pcm_name")
    if os.path.exists(SYSTEM_ALSA_CONF):
        head, slave = f"<{SYSTEM_ALSA_CONF}>\n", 'slave.pcm "null"'
    else:  # without the system config there is no "null" PCM to refer to by name
        head, slave = "", "slave.pcm { type null }"
    path.write_text(f"# neopain simulated bed: capture from {infile}\n{head}"
                    f'pcm.{pcm_name} {{ type file; {slave}; file "/dev/null"; infile "{infile}"; format "raw" }}\n')
    return path


#: Bytes per pipe write. At most PIPE_BUF (4096 on Linux), so a non-blocking write is all or nothing: the
#: pipe only ever holds whole blocks beyond what a reader has taken. 4096 bytes are a whole number of
#: S16 mono periods for every power-of-two period up to 2048 frames (the appliance's default is 1024).
BLOCK_BYTES = 4096


class PcmPipeFeeder:
    """Keeps a named pipe full with ``pcm`` (round and round) so the ALSA file plugin can read it forever.

    The pipe is opened read+write here: the reader's open never blocks, a reader closing does not break the
    writer (no EPIPE), and reopening the PCM simply continues the stream. Writes are non-blocking with
    select, so :meth:`stop` is prompt even while the pipe is full.

    Why whole blocks: the file plugin makes one ``read()`` of the infile per period and does not retry a
    short one; a pipe returns whatever it holds, so a pipe holding less than a period gives a period
    completed with stale bytes, and every later period is shifted (an unpaced reader that outran the feeder
    got "zeros after the loop point"). The feeder therefore writes the stream only in atomic
    :data:`BLOCK_BYTES` blocks: the pipe then holds a multiple of the block past any period boundary of a
    reader whose period divides it, so each read either waits for the feeder (empty pipe) or gets a whole
    period, however fast the reader is. A reader paced in real time (the appliance's Microphone) never gets
    near the feeder at all: the pipe holds about 32 s ahead.
    """

    def __init__(self, path: Path, pcm: np.ndarray, pipe_bytes: int = 1 << 20) -> None:
        if pcm.size == 0:
            raise ValueError("PcmPipeFeeder: empty PCM")
        self.path = path
        data = pcm.astype("<i2").tobytes()
        self._period = len(data)  # the loop, in bytes
        # one loop plus enough of its start that any block can be sliced without wrapping
        self._ring = data * (1 + -(-BLOCK_BYTES // len(data)))
        self._pos = 0
        self.bytes_written = 0
        self._stop = threading.Event()
        os.mkfifo(path, 0o600)
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        try:
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, pipe_bytes)  # 1 MiB = 32 s of audio in flight
        except OSError as exc:  # over /proc/sys/fs/pipe-max-size: the default 64 KiB (2 s) still works
            log.info("simulated bed: pipe size left at default (%s)", exc)
        self.capacity = fcntl.fcntl(self._fd, fcntl.F_GETPIPE_SZ)
        self._thread = threading.Thread(target=self._run, name="bed-pcm-feeder", daemon=True)

    def start(self) -> "PcmPipeFeeder":
        self._fill()  # the first reader finds a full pipe from sample 0
        self._thread.start()
        return self

    def _fill(self) -> None:
        """Write whole blocks until the pipe is full (a block that does not fit is not written at all)."""
        while not self._stop.is_set():
            try:
                n = os.write(self._fd, self._ring[self._pos:self._pos + BLOCK_BYTES])
            except BlockingIOError:
                return
            self._pos = (self._pos + n) % self._period
            self.bytes_written += n

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _, ready, _ = select.select([], [self._fd], [], 0.1)
            except (OSError, ValueError):
                return
            if ready:
                self._fill()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        try:
            os.close(self._fd)
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------- the bed


class SimulatedBed:
    """Plays one recording into a camera file, an ALSA PCM and a serial pty (see the module docstring).

    ``source`` is a recording folder, or a cohort root with optional ``subject`` and ``recording`` (default:
    the first of each). ``workdir`` receives the PCM, the ALSA config and the pty symlink; None makes a
    temporary one, deleted on :meth:`stop`.
    """

    def __init__(self, source: Path | str, subject: str | None = None, *, recording: str | None = None,
                 protocol: str = "masimo", workdir: Path | str | None = None, loop: bool = True,
                 speed: float = 1.0, pcm_name: str = DEFAULT_PCM_NAME) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        self.protocol = protocol
        self.loop = loop
        self.speed = float(speed)
        self.pcm_name = pcm_name
        self.recording = load_bed_recording(resolve_recording(source, subject, recording))
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="neopain-bed-")) if workdir is None else Path(workdir)
        self._emulator: RecordingMonitorEmulator | None = None
        self._feeder: PcmPipeFeeder | None = None
        self._t0: float | None = None  # monotonic seconds at bed time 0 (kept after stop for late stamps)
        self._running = False

    # -- paths the appliance is given -------------------------------------------------------------------
    @property
    def camera_source(self) -> str:
        """The video file the appliance's Camera opens (kind "file")."""
        return str(self.recording.video_path)

    @property
    def camera_fps(self) -> float:
        """Playback rate for the camera: the file's rate times ``speed``."""
        return self.recording.video_fps * self.speed

    @property
    def pcm_path(self) -> Path:
        """One loop of the bed's audio: raw S16_LE, 16 kHz, mono (synthetic data; see the module docstring)."""
        return self.workdir / PCM_FILE

    @property
    def alsa_config_path(self) -> Path:
        """Give this to the appliance as ``ALSA_CONFIG_PATH``."""
        return self.workdir / ALSA_CONFIG_FILE

    @property
    def alsa_device(self) -> str:
        """The ALSA PCM name to capture from (defined in :attr:`alsa_config_path`)."""
        return self.pcm_name

    @property
    def serial_port(self) -> str:
        """Stable symlink to the monitor pty (survives the emulator reopening it)."""
        return str(self.workdir / SERIAL_LINK)

    @property
    def emulator(self) -> MonitorEmulator | None:
        """The running monitor emulator (for health and records), None before start."""
        return self._emulator

    # -- time and values ----------------------------------------------------------------------------------
    def now(self) -> float:
        """Bed seconds since the last :meth:`start` (scaled by ``speed``)."""
        if self._t0 is None:
            raise RuntimeError("SimulatedBed.now: not started")
        return (time.monotonic() - self._t0) * self.speed

    def bed_time(self, mono_ns: int) -> float:
        """Bed time of a ``time.monotonic_ns()`` stamp (e.g. a VitalSample's ``t_mono_ns``)."""
        if self._t0 is None:
            raise RuntimeError("SimulatedBed.bed_time: not started")
        return (mono_ns / 1e9 - self._t0) * self.speed

    def vitals_at(self, bed_t: float) -> EmulatedVitals:
        """What the emulated monitor shows at bed time ``bed_t``: the recording's HR and SpO2 (pulse rate =
        HR); Masimo's sensor-off bit when neither is there; nothing after the end when not looping."""
        if not self.loop and bed_t >= self.recording.loop_s:
            hr = spo2 = None
        else:
            hr, spo2 = self.recording.numerics_at(float(self.recording.monitor_time(bed_t, self.loop)))
        exc = EXC_NORMAL_SET_MODE | (EXC_SENSOR_OFF if hr is None and spo2 is None else 0)
        return EmulatedVitals(hr=hr, spo2=spo2, pulse_rate=hr, perfusion_index=None, exc=exc)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> "SimulatedBed":
        if self._running:
            raise RuntimeError("SimulatedBed.start: already started")
        self._running = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in (PCM_FILE, PCM_FIFO, ALSA_CONFIG_FILE, SERIAL_LINK):
            (self.workdir / name).unlink(missing_ok=True)  # leftovers of an earlier run
        self.recording.pcm.astype("<i2").tofile(self.pcm_path)
        try:
            infile = self.pcm_path
            if self.loop:
                self._feeder = PcmPipeFeeder(self.workdir / PCM_FIFO, self.recording.pcm).start()
                infile = self._feeder.path
            write_alsa_file_config(self.alsa_config_path, infile.resolve(), self.pcm_name)
            emu = RecordingMonitorEmulator(self.protocol, self.recording, self.loop, values=self.vitals_at,
                                           speed=self.speed, link=self.workdir / SERIAL_LINK)
            self._t0 = time.monotonic() - emu.now() / self.speed  # the emulator's clock is the bed's clock
            self._emulator = emu.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the monitor and the audio feeder; delete the workdir if the bed created it."""
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None
        if self._feeder is not None:
            self._feeder.stop()
            self._feeder = None
        self._running = False
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "SimulatedBed":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- appliance configuration --------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """Environment the appliance process needs (ALSA reads it when the first PCM is opened)."""
        return {"ALSA_CONFIG_PATH": str(self.alsa_config_path)}

    def appliance_overrides(self) -> dict[str, dict[str, Any]]:
        """Config values pointing an appliance at this bed, by TOML section, plus ``env`` (not a TOML
        section: the process environment, see :meth:`environment`).

        Keys are the field names of :mod:`appliance.config`.
        """
        width, height = self.recording.video_size
        camera: dict[str, Any] = {"enabled": True, "source": self.camera_source, "kind": "file",
                                  "fps": round(min(max(self.camera_fps, 1.0), 120.0), 6),
                                  "width": width, "height": height, "loop": self.loop,
                                  # No fixed ROI: the device's face detector finds the rendered face, as it
                                  # would the infant's at a real bed.
                                  "face_roi": []}
        # The file plugin returns data as fast as it is read: the microphone must pace itself.
        microphone: dict[str, Any] = {"enabled": True, "device": self.alsa_device, "rate": PCM_RATE,
                                      "pace_realtime": True}
        monitor = {"enabled": True, "port": self.serial_port, "protocol": self.protocol,
                   "baud": DEFAULT_BAUD[self.protocol]}
        return {"camera": camera, "microphone": microphone, "monitor": monitor, "env": self.environment()}

    def write_appliance_config(self, path: Path | str, **sections: Mapping[str, Any]) -> Path:
        """Write a complete appliance TOML for this bed and check it with ``check_config``.

        ``sections`` override or add keys by section, e.g. ``mqtt={"host": "127.0.0.1", "port": 1884}``,
        ``device={"bed": "sim-01"}``. Stateful paths (outbox, engine cache, calibration sessions) default to the workdir so a
        desk run needs no /var/lib. The environment goes to ``<path>.env`` (systemd EnvironmentFile format).
        """
        return write_appliance_config(path, self, **sections)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def write_appliance_config(path: Path | str, bed: SimulatedBed, **sections: Mapping[str, Any]) -> Path:
    """See :meth:`SimulatedBed.write_appliance_config`. Raises ``ConfigError`` (naming the key) when the
    result would not pass ``neopain config check``, and ``ValueError`` for an unknown section or key."""
    from appliance.config import Config, check_config, render_toml, sections as config_sections

    path = Path(path)
    known = {f.name: f for f in config_sections()}
    overrides = {k: dict(v) for k, v in bed.appliance_overrides().items() if k != "env"}
    overrides.setdefault("outbox", {})["path"] = str(bed.workdir / "outbox.sqlite3")
    overrides.setdefault("scoring", {})["engine_cache_dir"] = str(bed.workdir / "engines")
    overrides.setdefault("calibration", {})["sessions_db"] = str(bed.workdir / "calibration-sessions.sqlite")
    for name, values in sections.items():
        if name not in known:
            raise ValueError(f"write_appliance_config: unknown section {name!r} (known: {', '.join(known)})")
        overrides.setdefault(name, {}).update(values)
    built = {}
    for name, values in overrides.items():
        default = known[name].default_factory()  # type: ignore[misc]
        unknown = set(values) - _field_names(type(default))
        if unknown:
            raise ValueError(f"write_appliance_config: unknown key(s) {', '.join(sorted(unknown))} in [{name}]")
        built[name] = dataclasses.replace(default, **values)
    text = render_toml(Config(**built), docs=True)
    header = (f"# Written by `neopain simulate-bed` for {bed.recording.directory} ({bed.protocol}).\n"
              f"# Run the appliance with ALSA_CONFIG_PATH={bed.alsa_config_path} (see {path.name}.env).\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + text, encoding="utf-8")
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    env_path = path.with_name(path.name + ".env")
    env_path.write_text("".join(f"{k}={v}\n" for k, v in bed.environment().items()), encoding="utf-8")
    check_config(path)
    return path


# ------------------------------------------------------------------------------------------------- cohort + CLI


#: The simulated bed's camera: frames of this side, rendered at that resolution (not upscaled), so the device's
#: face detector sees what it would see of an infant from a camera over the cot.
BED_VIDEO_SIZE = 320


def synth_bed_cohort(root: Path | str, *, minutes: float = 1.0, seed: int = 0,
                     video_size: int = BED_VIDEO_SIZE) -> Path:
    """A one-infant synthetic cohort for the bed (``--cohort`` not given); returns the cohort root."""
    from models.data.synth import SynthOptions, synth_cohort

    options = SynthOptions(minutes=minutes)
    options = dataclasses.replace(options, video=dataclasses.replace(options.video, size=video_size))
    return synth_cohort(root, 1, seed, options, progress=False).root


def add_simulate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``neopain simulate-bed`` (the CLI adds them to its sub-parser)."""
    parser.add_argument("--cohort", type=Path, help="cohort root or recording folder (default: synthesise a "
                        "one-infant cohort in the workdir)")
    parser.add_argument("--subject", help="subject id in the cohort (default: the first)")
    parser.add_argument("--recording", help="recording id of the subject (default: the first)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="masimo", help="monitor protocol on the pty")
    parser.add_argument("--workdir", type=Path, help="folder for the PCM, ALSA config and pty link "
                        "(default: a temporary folder, deleted on exit)")
    parser.add_argument("--write-config", type=Path, metavar="PATH",
                        help="also write an appliance TOML pointing at this bed (and PATH.env)")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: Ctrl-C)")
    parser.add_argument("--speed", type=float, default=1.0, help="monitor and camera clock speed-up")
    parser.add_argument("--no-loop", action="store_true", help="play the recording once")
    return parser


def run_simulate(args: argparse.Namespace) -> int:
    """Run the bed until Ctrl-C/SIGTERM or ``--duration``; prints what to point the appliance at."""
    workdir = args.workdir
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="neopain-bed-")) if own else Path(workdir)
    try:
        source = args.cohort
        if source is None:
            source = synth_bed_cohort(workdir / "cohort")
            print(f"synthetic cohort: {source}")
        bed = SimulatedBed(source, args.subject, recording=args.recording, protocol=args.protocol,
                           workdir=workdir, loop=not args.no_loop, speed=args.speed)
        stop = threading.Event()
        # Both signals just end the wait (explicitly: a shell's background job starts with SIGINT ignored).
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with bed:
                print(f"recording:        {bed.recording.directory} ({bed.recording.loop_s:.1f} s loop)")
                print(f"camera source:    {bed.camera_source} (file, {bed.camera_fps:g} fps)")
                print(f"ALSA_CONFIG_PATH: {bed.alsa_config_path}")
                print(f"ALSA device:      {bed.alsa_device}")
                print(f"serial port:      {bed.serial_port} ({bed.protocol})")
                print(f"raw PCM:          {bed.pcm_path} (synthetic audio, S16_LE 16 kHz mono)")
                if args.write_config:
                    print(f"appliance config: {bed.write_appliance_config(args.write_config)}")
                print("running; Ctrl-C to stop", flush=True)
                stop.wait(args.duration)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def cli_simulate(argv: list[str] | None = None) -> int:
    """``neopain simulate-bed`` as a function of its argument list (tests, ``python -m``)."""
    parser = add_simulate_arguments(argparse.ArgumentParser(prog="neopain simulate-bed",
                                                            description=__doc__.split("\n")[0]))
    return run_simulate(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(cli_simulate())
