"""End to end over a real pty: emulator (master side) <-> pyserial MonitorReader (slave side)."""

import os
import threading
import time

import numpy as np
import pytest

from appliance.devtools.monitor_emulator import EmulatedVitals, MonitorEmulator
from appliance.sources.monitor.masimo import format_line
from appliance.sources.monitor.reader import MonitorReader
from appliance.sources.monitor.types import RRIntervals, VitalSample, WaveChunk
from tests.appliance.sources.source_helpers import raw_pty


class Collector:
    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def __call__(self, item):
        with self.lock:
            self.items.append(item)

    def of(self, kind):
        with self.lock:
            return [x for x in self.items if isinstance(x, kind)]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def varying(t: float) -> EmulatedVitals:
    """Values that change every emulated second, so a read can be matched to what was sent."""
    k = int(t)
    return EmulatedVitals(hr=130 + k % 20, spo2=90 + k % 10, pulse_rate=131 + k % 20,
                          perfusion_index=round(1 + (k % 7) * 0.25, 2))


def test_masimo_values_read_equal_values_sent(tmp_path):
    sink = Collector()
    with MonitorEmulator("masimo", values=varying, speed=20, link=tmp_path / "ttyMON") as emu:
        with MonitorReader(emu.port, sink, protocol="masimo") as reader:
            assert wait_for(lambda: len(sink.of(VitalSample)) >= 15)
            emu.inject(b"garbage\xff\xfe\r\nSPO2=140% BPM=120\r\n")
            assert wait_for(lambda: reader.health().rejects.get("implausible:SPO2") == 1)
            health = reader.health()
    samples = sink.of(VitalSample)
    sent = [(v.spo2, v.pulse_rate, v.perfusion_index) for _, v in emu.sent_vitals]
    got = [(s.spo2, s.pulse_rate, s.perfusion_index) for s in samples]
    # what was read is exactly a contiguous run of what was sent (lines before the port opened are
    # flushed by pyserial's open, so the run may start late)
    start = sent.index(got[0])
    assert got == sent[start : start + len(got)], (health.connects, health.last_error, emu.dropped_bytes)
    assert len(set(got)) > 5  # the values really varied
    assert all(s.source == "masimo" and s.hr is None for s in samples)
    assert np.all(np.diff([s.t_mono_ns for s in samples]) > 0)
    assert health.connected and health.protocol == "masimo" and health.samples == len(samples)
    assert health.rejects.get("not_ascii") == 1


def test_intellivue_values_and_rr_read_equal_values_sent(tmp_path):
    sink = Collector()
    hr = 150.0
    const = lambda t: EmulatedVitals(hr=hr, spo2=95, pulse_rate=149, perfusion_index=1.75)  # noqa: E731
    with MonitorEmulator("intellivue", values=const, speed=1.0, link=tmp_path / "ttyMP") as emu:
        with MonitorReader(emu.port, sink, protocol="intellivue", wave_period_s=0.25) as reader:
            assert wait_for(lambda: sum(len(r.rr_ms) for r in sink.of(RRIntervals)) >= 6, timeout=15)
            health = reader.health()
    vitals = sink.of(VitalSample)
    assert vitals and all((v.hr, v.spo2, v.pulse_rate, v.perfusion_index) == (150, 95, 149, 1.75) for v in vitals)
    waves = sink.of(WaveChunk)
    assert all(w.label == "ECG_II" and w.fs_hz == 500 for w in waves)
    rr = np.concatenate([r.rr_ms for r in sink.of(RRIntervals)])
    rr = rr[~np.isnan(rr)]
    assert len(rr) >= 5 and np.mean(np.abs(rr - 60000 / hr)) < 4.0
    assert health.associated and emu.associations == 1 and health.protocol == "intellivue"


@pytest.mark.parametrize("protocol", ["masimo", "intellivue"])
def test_auto_detect(tmp_path, protocol):
    sink = Collector()
    with MonitorEmulator(protocol, speed=10, link=tmp_path / "tty") as emu:
        with MonitorReader(emu.port, sink, protocol="auto", numeric_period_s=0.1, detect_s=0.5) as reader:
            assert wait_for(lambda: len(sink.of(VitalSample)) >= 3)
            assert reader.health().protocol == protocol
    assert all(s.source == protocol for s in sink.of(VitalSample))




def test_auto_detect_delivers_the_line_that_identified_a_masimo():
    """With ``protocol = auto`` the first Masimo line both identifies the monitor and is a reading: it is
    parsed, flagged (a Radical-5's ALARM=20: alarm silenced) and delivered, stamped at its arrival."""
    sink = Collector()
    with raw_pty() as (master, path):
        with MonitorReader(path, sink, protocol="auto", detect_s=60.0) as reader:
            assert wait_for(lambda: reader.health().connected)  # opened (and flushed) before anything is sent
            sent_ns = time.monotonic_ns()
            os.write(master, b"02/22/16 22:47:45 SN=0000056661 SPO2=097% BPM=141 PI=02.10% ALARM=20 EXC=800\r\n")
            assert wait_for(lambda: len(sink.of(VitalSample)) >= 1)
            os.write(master, format_line(95, 150, 1.5))
            assert wait_for(lambda: len(sink.of(VitalSample)) >= 2)
            health = reader.health()
    first, second = sink.of(VitalSample)
    assert (first.spo2, first.pulse_rate, first.perfusion_index, first.flags) == (97, 141, 2.1, {"alarm_silenced"})
    assert (second.spo2, second.pulse_rate, second.flags) == (95, 150, frozenset())
    assert sent_ns <= first.t_mono_ns < second.t_mono_ns
    assert health.protocol == "masimo" and health.samples == 2 and not health.rejects


@pytest.mark.parametrize("protocol", ["masimo", "intellivue"])
def test_reconnect_after_the_pty_closes_and_reopens(tmp_path, protocol):
    sink = Collector()
    with MonitorEmulator(protocol, speed=10, link=tmp_path / "tty") as emu:
        reader = MonitorReader(emu.port, sink, protocol=protocol, numeric_period_s=0.1, backoff_s=(0.05, 0.2))
        with reader:
            assert wait_for(lambda: len(sink.of(VitalSample)) >= 3)
            emu.close()
            assert wait_for(lambda: not reader.health().connected)
            assert reader.health().disconnects == 1
            n = len(sink.of(VitalSample))
            emu.inject(b"nobody hears this")  # no-op while unplugged
            emu.reopen()
            assert wait_for(lambda: len(sink.of(VitalSample)) >= n + 3)
            health = reader.health()
    assert health.connected and health.connects == 2
    assert health.last_sample_mono_ns == sink.of(VitalSample)[-1].t_mono_ns
    if protocol == "intellivue":
        assert emu.associations == 2  # re-associated after the reopen


def test_intellivue_survives_garbage_between_frames(tmp_path):
    sink = Collector()
    with MonitorEmulator("intellivue", speed=10, link=tmp_path / "tty") as emu:
        with MonitorReader(emu.port, sink, protocol="intellivue", numeric_period_s=0.1) as reader:
            assert wait_for(lambda: len(sink.of(VitalSample)) >= 2)
            emu.inject(b"\x00\x01\x02 line noise \xc0\x11\x01\x00\x05abc\xc1")
            n = len(sink.of(VitalSample))
            assert wait_for(lambda: len(sink.of(VitalSample)) >= n + 3)
            rejects = reader.health().rejects
    assert rejects.get("garbage", 0) >= 1 and rejects.get("bad_length", 0) >= 1


def test_stop_joins_even_when_the_port_never_appears(tmp_path):
    reader = MonitorReader(str(tmp_path / "absent"), lambda x: None, protocol="masimo").start()
    assert wait_for(lambda: "absent" in reader.health().last_error)  # it tried (no fixed sleep: a busy machine)
    t0 = time.monotonic()
    reader.stop()
    assert time.monotonic() - t0 < 2.0
    health = reader.health()
    assert not health.connected and health.connects == 0 and "absent" in health.last_error
