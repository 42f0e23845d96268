"""Microphone capture through the real ALSA library and pyalsaaudio, replaying a raw file (file plugin).

Each scenario runs in a child process because ALSA reads ALSA_CONFIG_PATH when the first PCM is opened.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.sources.microphone import AudioPeriod, MicrophoneConfig
from tests.appliance.alsa_replay import run_with_alsa, write_alsa_config

pytest.importorskip("alsaaudio")

CHILD = r'''
import errno, json, os, sys, threading, time
import numpy as np
from appliance.sources.microphone import Microphone, MicrophoneConfig, open_alsa_pcm, wait_until

mode, infile, out, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
periods, lock = [], threading.Lock()
def sink(p):
    with lock:
        if sum(len(q.samples) for q in periods) < want:
            periods.append(p)
def have():
    with lock:
        return sum(len(q.samples) for q in periods) >= want

factory = open_alsa_pcm
if mode == "vanish":
    # The real PCM is closed under the reader after 3 reads (as if unplugged) and the file is swapped,
    # so reopening fails until the new file appears: it appears when the first reopen has failed (an event,
    # not a timer, so a slow machine cannot reorder the two).
    class Vanishing:
        reads = 0
        def __init__(self, pcm): self.pcm = pcm
        def read(self):
            Vanishing.reads += 1
            if Vanishing.reads == 4:
                self.pcm.close()
                os.rename(infile, infile + ".gone")
            return self.pcm.read()
        def close(self):
            try: self.pcm.close()
            except Exception: pass
    def factory(cfg):
        try:
            return Vanishing(open_alsa_pcm(cfg))
        except Exception:
            if os.path.exists(infile + ".next"):
                os.rename(infile + ".next", infile)  # plugged back in, after this failed open
            raise
elif mode == "overrun":
    class Overrun:
        reads = 0
        def __init__(self, pcm): self.pcm = pcm
        def read(self):
            Overrun.reads += 1
            if Overrun.reads == 3:
                self.pcm.read()  # this period is lost, as in a real overrun
                return -errno.EPIPE, b""
            return self.pcm.read()
        def close(self): self.pcm.close()
    factory = lambda cfg: Overrun(open_alsa_pcm(cfg))

cfg = MicrophoneConfig(device="replay", period_size=int(sys.argv[5]), pace_realtime=(mode == "paced"),
                       reopen_backoff_s=0.05)
mic = Microphone(cfg, sink, pcm_factory=factory)
t0 = time.monotonic_ns()
mic.start()
ok = wait_until(have, 20.0)
mic.stop()
h = mic.health()
with lock:
    np.savez(out, samples=np.concatenate([p.samples for p in periods]) if periods else np.zeros(0, np.int16),
             t_ns=np.array([p.t_ns for p in periods]), n=np.array([len(p.samples) for p in periods]),
             gap=np.array([p.gap_before for p in periods]), seq=np.array([p.seq for p in periods]), t0=t0)
print(json.dumps(dict(ok=ok, alive=mic._thread.is_alive(), open=h.open, periods=h.periods, overruns=h.overruns,
                      reopens=h.reopen_count, open_failures=h.open_failures, error=h.last_error)))
'''


def _capture(tmp_path: Path, mode: str, samples: np.ndarray, want: int, period: int = 256) -> tuple[dict, dict]:
    infile = tmp_path / "in.raw"
    samples.astype("<i2").tofile(infile)
    conf = write_alsa_config(tmp_path, infile)
    out = tmp_path / "out.npz"
    proc = run_with_alsa(conf, CHILD, mode, str(infile), str(out), str(want), str(period))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    data = dict(np.load(out))
    return report, data


def _signal(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-32768, 32767, n, dtype=np.int16)


def test_captures_exactly_the_samples_written(tmp_path: Path) -> None:
    x = _signal(16000, 1)
    report, data = _capture(tmp_path, "plain", x, want=x.size)
    assert report["ok"] and not report["alive"] and not report["open"]
    got = data["samples"][: x.size]
    np.testing.assert_array_equal(got, x)
    assert (np.diff(data["t_ns"]) >= 0).all()  # stamped on the monotonic clock, in order
    assert (data["seq"] == np.arange(data["seq"].size)).all()
    assert not data["gap"].any()


def test_pacing_delivers_in_real_time(tmp_path: Path) -> None:
    x = _signal(8000, 2)  # 0.5 s
    report, data = _capture(tmp_path, "paced", x, want=x.size, period=800)
    np.testing.assert_array_equal(data["samples"][: x.size], x)
    # period k's last sample is due (k+1)*50 ms after start: no period arrives before its time (the file itself
    # is read at disk speed), and the stamps step at the real rate. A late wake-up on a busy machine only
    # delays one stamp: pacing is on absolute due times, so the steps do not drift (no upper bound on the total).
    t = (data["t_ns"] - int(data["t0"])) / 1e9  # from just before start(): the pacing clock starts later
    assert (t >= 0.05 * (np.arange(len(t)) + 1) - 0.001).all()
    assert np.median(np.diff(t)) == pytest.approx(0.05, abs=0.01)


def test_overrun_is_counted_and_flags_a_gap(tmp_path: Path) -> None:
    x = _signal(256 * 10, 3)
    report, data = _capture(tmp_path, "overrun", x, want=256 * 6)
    assert report["overruns"] == 1 and report["reopens"] == 0
    gaps = data["gap"]
    assert gaps.tolist() == [False, False, True, False, False, False]
    # the third period was lost: the flagged one carries the file's fourth period
    np.testing.assert_array_equal(data["samples"][512:768], x[768:1024])


def test_reopens_after_the_device_disappears(tmp_path: Path) -> None:
    x = _signal(256 * 8, 4)
    nxt = _signal(256 * 8, 5)
    nxt.astype("<i2").tofile(tmp_path / "in.raw.next")
    report, data = _capture(tmp_path, "vanish", x, want=256 * 7)
    assert report["ok"], report
    assert report["reopens"] == 1
    assert report["open_failures"] == 1  # the file was missing at the first reopen: it failed and was retried
    s = data["samples"]
    np.testing.assert_array_equal(s[: 3 * 256], x[: 3 * 256])  # three good reads before the loss
    np.testing.assert_array_equal(s[3 * 256: 7 * 256], nxt[: 4 * 256])  # the new device from its start
    assert data["gap"].tolist() == [False] * 3 + [True] + [False] * 3


def test_period_start_time_and_config_errors() -> None:
    p = AudioPeriod(t_ns=10**9, samples=np.zeros(161, np.int16), rate=16000, seq=0)
    assert p.start_ns == 10**9 - 10_000_000  # 160 sample intervals = 10 ms before the last sample
    with pytest.raises(ValueError, match="channels"):
        MicrophoneConfig(channels=2)
    with pytest.raises(ValueError, match="period_size"):
        MicrophoneConfig(period_size=0)
