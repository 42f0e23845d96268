"""The simulated bed through the appliance's real input paths: OpenCV (Camera) on the bed's video, ALSA +
pyalsaaudio (Microphone) through the bed's ALSA config, pyserial (MonitorReader) on the bed's pty.

Expected values are recomputed here from the recording's files (vitals.csv, audio.wav, the video), not taken
from the bed, so a wrong clock offset, loop length or resampling in the bed shows up as a mismatch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from appliance.config import ConfigError, check_config
from appliance.devtools.simulate import SimulatedBed, cli_simulate, resolve_recording
from appliance.sources.camera import Camera, CameraConfig
from appliance.sources.monitor.reader import MonitorReader
from appliance.sources.monitor.types import RRIntervals, VitalSample, WaveChunk
from models.data.layout import DatasetError, read_vitals
from models.data.synth import SynthOptions, synth_cohort
from tests.appliance.alsa_replay import run_with_alsa


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One infant, half a minute, 64 px: the smallest recording with every modality."""
    options = SynthOptions(minutes=0.5)
    options = dataclasses.replace(options, video=dataclasses.replace(options.video, size=64))
    return synth_cohort(tmp_path_factory.mktemp("cohort"), 1, seed=3, options=options, progress=False).root


@pytest.fixture(scope="module")
def rec(cohort: Path) -> dict:
    """The recording as the test reads it, independently of appliance.devtools.simulate."""
    directory = cohort / "S001" / "R01"
    meta = json.loads((directory / "recording.json").read_text())
    cap = cv2.VideoCapture(str(directory / "video.mp4"))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return dict(dir=directory, meta=meta, fps=fps, frames=frames, loop_s=len(frames) / fps,
                vitals=read_vitals(directory / "vitals.csv"))


def expected_numerics(rec: dict, bed_t: float) -> tuple[float | None, float | None]:
    """(HR, SpO2) the recording has at bed time ``bed_t``: last 1 Hz row at or before, looping."""
    off = rec["meta"]["clock_offsets_s"]
    monitor_t = off["video"] + bed_t % rec["loop_s"] - off["vitals"]
    v = rec["vitals"]
    rows = np.flatnonzero(~(np.isnan(v.hr_bpm) & np.isnan(v.spo2_pct)) & (v.t_s <= monitor_t))
    if rows.size == 0 or monitor_t - v.t_s[rows[-1]] > 2.0:
        return None, None
    hr, spo2 = v.hr_bpm[rows[-1]], v.spo2_pct[rows[-1]]
    return (None if np.isnan(hr) else float(hr)), (None if np.isnan(spo2) else float(spo2))


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Collector:
    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

    def __call__(self, item) -> None:
        with self.lock:
            self.items.append(item)

    def of(self, kind) -> list:
        with self.lock:
            return [x for x in self.items if isinstance(x, kind)]


# ------------------------------------------------------------------------------------------------ audio


def test_pcm_is_the_recordings_audio_at_16k_from_the_first_frame(cohort: Path, rec: dict) -> None:
    bed = SimulatedBed(cohort)  # not started: loading alone computes the PCM
    rate, raw = wavfile.read(rec["dir"] / "audio.wav")
    x = raw.astype(np.float64) / 32767.0
    if x.ndim == 2:
        x = x.mean(axis=1)
    g = math.gcd(16000, rate)
    y = resample_poly(x, 16000 // g, rate // g)
    off = rec["meta"]["clock_offsets_s"]
    skip = round((off["video"] - off["audio"]) * 16000)  # the audio starts before the first frame
    assert skip > 0
    want = np.round(np.clip(y[skip:], -1, 1) * 32767).astype(np.int64)
    pcm = bed.recording.pcm.astype(np.int64)
    assert pcm.size == round(rec["loop_s"] * 16000)
    n = min(pcm.size, want.size)
    assert np.abs(pcm[:n] - want[:n]).max() <= 1
    assert (pcm[n:] == 0).all()  # past the end of the audio: silence, not garbage
    assert pcm.std() > 50


def _alsa_child(bed: SimulatedBed, code: str, *args: str) -> dict:
    proc = run_with_alsa(bed.alsa_config_path, code, *args, timeout_s=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


CAPTURE = r'''
import json, sys, time
import numpy as np, alsaaudio
from appliance.sources.microphone import Microphone, MicrophoneConfig, wait_until
device, out, raw_n, mic_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pcm = alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, mode=alsaaudio.PCM_NORMAL, rate=16000, channels=1,
                    format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=1024, periods=4, device=device)
raw = []
while sum(map(len, raw)) < raw_n:
    n, data = pcm.read()
    raw.append(np.frombuffer(data, "<i2")[:n].copy())
pcm.close()
got = []
mic = Microphone(MicrophoneConfig(device=device, period_size=1024, pace_realtime=True), got.append)
t0 = time.monotonic()
mic.start()
ok = wait_until(lambda: sum(len(p.samples) for p in list(got)) >= mic_n, 10.0)
elapsed = time.monotonic() - t0
mic.stop()
np.savez(out, raw=np.concatenate(raw)[:raw_n], mic=np.concatenate([p.samples for p in got])[:mic_n])
print(json.dumps(dict(ok=ok, elapsed=elapsed, consumed=int(sum(map(len, raw))))))
'''


def test_alsa_capture_through_the_bed_config_loops_the_pcm(cohort: Path, tmp_path: Path) -> None:
    """Deterministic however loaded the machine is: the unpaced reader reads more than the pipe holds, so
    it must wait for the feeder, and the feeder's whole-block writes mean waiting is all it can do (never a
    partial period, which the file plugin would complete with stale bytes and shift the stream)."""
    with SimulatedBed(cohort, workdir=tmp_path / "bed") as bed:
        pcm = bed.recording.pcm
        raw_n, mic_n = int(pcm.size * 1.25), 8000
        assert raw_n * 2 > bed._feeder.capacity  # past what the pipe held when the reader opened it
        out = tmp_path / "cap.npz"
        report = _alsa_child(bed, CAPTURE, bed.alsa_device, str(out), str(raw_n), str(mic_n))
    data = np.load(out)
    # an unpaced reader gets the loop, sample for sample, and round again (no zeros at the end of the file)
    np.testing.assert_array_equal(data["raw"], np.tile(pcm, 2)[:raw_n])
    # the appliance's Microphone (default 1024-frame periods), paced in real time, continues the same stream
    mic, ring = data["mic"], np.tile(pcm, 3)
    assert report["ok"] and mic.size == mic_n
    start = report["consumed"] % pcm.size  # whole periods were read, a little past raw_n
    np.testing.assert_array_equal(mic, ring[start:start + mic_n])
    assert report["elapsed"] >= 0.45  # paced: half a second of audio cannot arrive sooner


RAW_ONCE = r'''
import json, sys
import numpy as np, alsaaudio
device, want = sys.argv[1], int(sys.argv[2])
pcm = alsaaudio.PCM(type=alsaaudio.PCM_CAPTURE, rate=16000, channels=1, format=alsaaudio.PCM_FORMAT_S16_LE,
                    periodsize=1024, periods=4, device=device)
raw = []
while sum(map(len, raw)) < want:
    n, data = pcm.read()
    raw.append(np.frombuffer(data, "<i2")[:n].copy())
np.save(sys.argv[3], np.concatenate(raw)[:want])
print(json.dumps({}))
'''


def test_without_loop_the_pcm_file_plays_once(cohort: Path, tmp_path: Path) -> None:
    with SimulatedBed(cohort, workdir=tmp_path / "bed", loop=False) as bed:
        pcm = bed.recording.pcm
        assert not (tmp_path / "bed" / "mic.fifo").exists()
        assert np.array_equal(np.fromfile(bed.pcm_path, "<i2"), pcm)
        _alsa_child(bed, RAW_ONCE, bed.alsa_device, str(pcm.size + 4096), str(tmp_path / "once.npy"))
    got = np.load(tmp_path / "once.npy")
    np.testing.assert_array_equal(got[:pcm.size], pcm)
    assert (got[pcm.size:] == 0).all()  # ALSA's file plugin after end of file


# ------------------------------------------------------------------------------------------------ camera


def test_camera_plays_the_bed_video_paced_and_looping(cohort: Path, rec: dict, tmp_path: Path) -> None:
    with SimulatedBed(cohort, workdir=tmp_path / "bed", speed=10.0) as bed:
        cam = bed.appliance_overrides()["camera"]
        assert cam["kind"] == "file" and cam["fps"] == pytest.approx(10 * rec["fps"])
        n = len(rec["frames"])
        frames = Collector()
        config = CameraConfig(source=cam["source"], kind=cam["kind"], fps=cam["fps"], width=cam["width"],
                              height=cam["height"], loop=True)
        t0 = time.monotonic()
        with Camera(config, frames):
            assert wait_for(lambda: len(frames.items) >= n + 5, timeout=15)
        elapsed = time.monotonic() - t0
    got = frames.items[: n + 5]
    assert [f.index for f in got] == list(range(n + 5))
    for f in got[:3] + got[n - 2:]:  # the start, the end and round again: frame k is file frame k mod n
        assert np.abs(f.image.astype(int) - rec["frames"][f.index % n]).mean() < 1.0
    assert elapsed >= (n + 4) / cam["fps"] * 0.9  # paced at the file rate times speed, not as fast as decoding


# ------------------------------------------------------------------------------------------------ monitor


def _check_numerics(rec: dict, sent: list, samples: list[VitalSample], hr_of) -> set:
    """Each reading is the recording's value at the bed time the emulator sent it, with no timing in the check
    (a loaded machine delays lines, it must not fail the test): what was read is a contiguous run of what the
    emulator sent, and each sent line's values equal the recording's, recomputed here, at its bed time."""
    got = [(hr_of(s), s.spo2) for s in samples]
    sent_values = [(v.hr, v.spo2) for _, v in sent]
    offsets = [k for k in range(len(sent) - len(got) + 1) if sent_values[k:k + len(got)] == got]
    assert got and offsets, (got, sent_values)
    seen = set()
    for (t, _), value in zip(sent[offsets[0]:], got):
        assert value in {expected_numerics(rec, u) for u in (t - 1e-3, t, t + 1e-3)}, (t, value)
        seen.add(value)
    return seen


def test_masimo_monitor_reads_the_recordings_values(cohort: Path, rec: dict, tmp_path: Path) -> None:
    sink = Collector()
    with SimulatedBed(cohort, protocol="masimo", workdir=tmp_path / "bed", speed=10.0) as bed:
        ov = bed.appliance_overrides()["monitor"]
        assert ov["port"] == bed.serial_port and Path(bed.serial_port).is_symlink()
        with MonitorReader(bed.serial_port, sink, protocol=ov["protocol"], baudrate=ov["baud"]) as reader:
            # 1 line per emulated second at 10x: past the end of the 30 s loop and round again
            assert wait_for(lambda: sink.of(VitalSample) and bed.bed_time(sink.of(VitalSample)[-1].t_mono_ns)
                            > rec["loop_s"] + 4, timeout=15)
            health = reader.health()
        sent = list(bed.emulator.sent_vitals)
    samples = sink.of(VitalSample)
    assert health.protocol == "masimo" and not health.rejects
    assert max(t for t, _ in sent) > rec["loop_s"]  # past the end of the loop and round again
    seen = _check_numerics(rec, sent, samples, lambda s: s.pulse_rate)
    assert len({hr for hr, _ in seen if hr is not None}) >= 3  # the values follow the recording over time
    assert sum(s.spo2 is not None for s in samples) > len(samples) // 2


def test_intellivue_monitor_reads_values_and_the_recordings_ecg(cohort: Path, rec: dict, tmp_path: Path) -> None:
    sink = Collector()
    with SimulatedBed(cohort, protocol="intellivue", workdir=tmp_path / "bed", speed=4.0) as bed:
        with MonitorReader(bed.serial_port, sink, protocol="intellivue", numeric_period_s=0.25,
                           wave_period_s=0.1) as reader:
            assert wait_for(lambda: sum(np.isfinite(r.rr_ms).sum() for r in sink.of(RRIntervals)) >= 12,
                            timeout=15)
            assert wait_for(lambda: len(sink.of(VitalSample)) >= 8)
            health = reader.health()
        sent = list(bed.emulator.sent_vitals)
    assert health.associated or health.samples > 0
    samples = sink.of(VitalSample)
    _check_numerics(rec, sent, samples, lambda s: s.hr)
    assert all(s.pulse_rate == s.hr for s in samples)
    waves = sink.of(WaveChunk)
    assert waves and all(w.label == "ECG_II" and w.fs_hz == 250.0 for w in waves)
    # beats found in the served wave are the recording's beats: each RR equals one in vitals.csv
    rr = np.concatenate([r.rr_ms for r in sink.of(RRIntervals)])
    rr = rr[np.isfinite(rr)]
    truth = rec["vitals"].rr_ms[np.isfinite(rec["vitals"].rr_ms)]
    err = np.abs(rr[:, None] - truth[None, :]).min(axis=1)
    assert np.median(err) < 3.0 and (err < 8.0).mean() >= 0.8, err


# ------------------------------------------------------------------------------------------------ config, CLI


def test_written_appliance_config_passes_check(cohort: Path, tmp_path: Path) -> None:
    bed = SimulatedBed(cohort, protocol="intellivue", workdir=tmp_path / "bed")
    path = bed.write_appliance_config(tmp_path / "etc" / "appliance.toml", mqtt={"host": "127.0.0.1", "port": 1884},
                                      device={"bed": "sim-01"})
    config = check_config(path)
    assert config.camera.source == bed.camera_source and config.camera.kind == "file"
    assert config.microphone.device == bed.alsa_device
    assert (config.monitor.port, config.monitor.protocol, config.monitor.baud) == (bed.serial_port, "intellivue", 115200)
    assert (config.mqtt.port, config.device.bed) == (1884, "sim-01")
    assert Path(config.outbox.path).parent == tmp_path / "bed"
    env = Path(str(path) + ".env").read_text()
    assert env == f"ALSA_CONFIG_PATH={bed.alsa_config_path}\n"
    with pytest.raises(ValueError, match="colour"):
        bed.write_appliance_config(tmp_path / "bad.toml", camera={"colour": "red"})
    with pytest.raises(ValueError, match="unknown section 'sound'"):
        bed.write_appliance_config(tmp_path / "bad.toml", sound={})
    with pytest.raises(ConfigError, match="mqtt.port"):
        bed.write_appliance_config(tmp_path / "bad.toml", mqtt={"port": 0})


def test_recording_selection_and_errors(cohort: Path, tmp_path: Path) -> None:
    assert resolve_recording(cohort) == cohort / "S001" / "R01"
    assert resolve_recording(cohort / "S001" / "R01") == cohort / "S001" / "R01"
    assert resolve_recording(cohort, "S001", "R01") == cohort / "S001" / "R01"
    with pytest.raises(DatasetError, match="S009"):
        resolve_recording(cohort, "S009")
    with pytest.raises(DatasetError, match="neither a recording folder"):
        resolve_recording(tmp_path)
    with pytest.raises(ValueError, match="protocol"):
        SimulatedBed(cohort, protocol="hl7")
    with pytest.raises(ValueError, match="speed"):
        SimulatedBed(cohort, speed=0)


def test_cli_runs_for_a_duration_and_cleans_up(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    workdir = tmp_path / "bed"
    code = cli_simulate(["--cohort", str(cohort), "--workdir", str(workdir), "--protocol", "masimo",
                         "--duration", "0.3", "--write-config", str(tmp_path / "app.toml")])
    out = capsys.readouterr().out
    assert code == 0
    assert f"serial port:      {workdir / 'ttyBED'}" in out and "ALSA_CONFIG_PATH" in out
    assert check_config(tmp_path / "app.toml").monitor.port == str(workdir / "ttyBED")
    assert not (workdir / "ttyBED").exists()  # the pty link goes with the bed
