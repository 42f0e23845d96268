"""Ring buffers (span and count bounds, range queries, ordering, threads) and the clock helpers."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

from appliance.scoring.buffers import ModalityBuffers, RingBuffer, RRInterval, VitalsSample
from appliance.clock import NS_PER_S, age_s, now_ns, to_utc, utc_iso

S = NS_PER_S


@dataclass(frozen=True)
class Item:
    t_ns: int
    v: int = 0


def test_span_bound_and_range_queries() -> None:
    b: RingBuffer[Item] = RingBuffer("x", max_span_s=2.0, max_count=100)
    for i in range(10):
        b.append(Item(i * S // 2, i))  # every 0.5 s
    assert [it.v for it in b] == [5, 6, 7, 8, 9]  # newest at 4.5 s keeps stamps >= 2.5 s
    assert [it.v for it in b.between(3 * S, 4 * S)] == [6, 7, 8]  # inclusive both ends
    assert b.between(10 * S, 11 * S) == []
    assert [it.v for it in b.last(2)] == [8, 9]
    assert [it.v for it in b.last(2, until_ns=3 * S + 1)] == [5, 6]
    assert b.latest(until_ns=3 * S - 1).v == 5
    assert b.latest(until_ns=S) is None and b.dropped == 0
    with pytest.raises(ValueError, match="empty range"):
        b.between(2, 1)


def test_count_bound_and_order_check() -> None:
    b: RingBuffer[Item] = RingBuffer("frames", max_span_s=100.0, max_count=3)
    for i in range(5):
        b.append(Item(i, i))
    assert len(b) == 3 and [it.v for it in b] == [2, 3, 4] and b.dropped == 2
    b.append(Item(4, 5))  # equal stamps are allowed
    with pytest.raises(ValueError, match="'frames'.*older"):
        b.append(Item(3))
    with pytest.raises(TypeError, match="int nanoseconds"):
        b.append(Item(5.0))  # type: ignore[arg-type]
    b.clear()
    assert len(b) == 0 and b.latest() is None
    with pytest.raises(ValueError, match="max_count"):
        RingBuffer("y", max_span_s=1, max_count=0)
    with pytest.raises(ValueError, match="max_span_s"):
        RingBuffer("y", max_span_s=float("inf"), max_count=1)


def test_concurrent_writers_and_readers() -> None:
    b: RingBuffer[Item] = RingBuffer("x", max_span_s=1e6, max_count=10**6)
    lock = threading.Lock()
    counter = [0]

    def writer() -> None:
        for _ in range(2000):
            with lock:  # one monotonic clock: stamps are taken and appended in order
                counter[0] += 1
                b.append(Item(counter[0]))

    def reader() -> None:
        for _ in range(300):
            got = b.between(0, 10**9)
            assert all(a.t_ns <= c.t_ns for a, c in zip(got, got[1:]))

    threads = [threading.Thread(target=writer) for _ in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(b) == 6000 and [it.t_ns for it in b] == list(range(1, 6001))


def test_modality_buffers_accept_vitals_and_rr() -> None:
    mb = ModalityBuffers()
    mb.vitals.append(VitalsSample(1, hr_bpm=140.0, spo2_pct=None))
    mb.rr.append(RRInterval(2, rr_ms=430.0))
    assert mb.vitals.latest().spo2_pct is None and mb.rr.latest().rr_ms == 430.0
    assert mb.vitals.max_span_ns >= 30 * S  # a 30 s vitals window always fits


def test_clock_to_utc() -> None:
    utc = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert to_utc(7 * S, mono_now_ns=10 * S, utc_now=utc) == utc - timedelta(seconds=3)
    stamp = now_ns()
    assert abs((to_utc(stamp) - datetime.now(timezone.utc)).total_seconds()) < 1
    assert utc_iso(stamp).endswith("Z")
    assert age_s(None) is None and age_s(S, at_ns=3 * S) == 2.0
    with pytest.raises(ValueError, match="both"):
        to_utc(0, mono_now_ns=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        to_utc(0, mono_now_ns=1, utc_now=datetime(2024, 1, 1))


def test_adapters_from_monitor_types() -> None:
    import numpy as np

    from appliance.scoring.buffers import extend_rr
    from appliance.sources.monitor.types import RRIntervals, VitalSample

    v = VitalsSample.from_monitor(VitalSample(5, hr=None, spo2=97.0, pulse_rate=141.0, source="masimo"))
    assert (v.t_ns, v.hr_bpm, v.spo2_pct, v.valid, v.source) == (5, 141.0, 97.0, True, "masimo")
    assert not VitalsSample.from_monitor(VitalSample(6, hr=None, spo2=None, pulse_rate=None)).valid
    mb = ModalityBuffers()
    batch = RRIntervals(10, beat_t_mono_ns=np.array([1, 2, 3]), rr_ms=np.array([np.nan, 420.0, 430.0]))
    assert extend_rr(mb.rr, batch) == 2 and [r.rr_ms for r in mb.rr] == [420.0, 430.0]
    resent = RRIntervals(11, beat_t_mono_ns=np.array([3, 4]), rr_ms=np.array([430.0, 440.0]))
    assert extend_rr(mb.rr, resent) == 1 and [r.t_ns for r in mb.rr] == [2, 3, 4]
