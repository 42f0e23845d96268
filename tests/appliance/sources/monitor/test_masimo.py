"""Masimo ASCII 1 parsing: real line, missing values, EXC/ALARM bits, implausible values, fuzzing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sources.monitor.masimo import format_line, parse_line
from appliance.sources.monitor.types import Rejection, VitalSample

SAMPLE = (
    b"02/22/16 22:47:45 SN=0000056661 SPO2=098% BPM=097 PI=03.60% SPCO=--.-% SPMET=--.-% "
    b"DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000800\r\n"
)


def test_reference_sample_line():
    s = parse_line(SAMPLE, t_mono_ns=123)
    assert isinstance(s, VitalSample)
    assert (s.spo2, s.pulse_rate, s.perfusion_index, s.hr) == (98.0, 97.0, 3.6, None)
    assert s.flags == frozenset()  # 0x800 is "normal SET mode", not a fault
    assert s.t_mono_ns == 123 and s.source == "masimo"


def test_str_input_and_default_stamp_is_monotonic():
    import time

    before = time.monotonic_ns()
    s = parse_line(SAMPLE.decode())
    assert isinstance(s, VitalSample) and before <= s.t_mono_ns <= time.monotonic_ns()


def test_missing_values_are_none():
    s = parse_line(b"02/22/16 22:47:45 SPO2=---% BPM=--- PI=--.--% EXC=000000")
    assert isinstance(s, VitalSample)
    assert s.spo2 is None and s.pulse_rate is None and s.perfusion_index is None
    s = parse_line(b"SPO2=095% ALARM=0000")  # a varying token set: no BPM, no PI
    assert isinstance(s, VitalSample) and s.spo2 == 95.0 and s.pulse_rate is None


def test_exc_bits_become_flags_and_invalidate_values():
    s = parse_line(format_line(98, 120, 1.5, exc=0x20 | 0x4))  # sensor off + low perfusion
    assert isinstance(s, VitalSample)
    assert {"sensor_off", "low_perfusion"} <= s.flags
    assert s.spo2 is None and s.pulse_rate is None  # a sensor that is off gives no valid value
    s = parse_line(format_line(98, 120, 1.5, exc=0x10 | 0x40 | 0x400))
    assert s.flags == {"interference", "ambient_light", "low_signal_iq"}
    assert s.spo2 == 98 and s.pulse_rate == 120  # quality warnings keep the values
    for bit, name in [(0x1, "no_sensor"), (0x2, "defective_sensor"), (0x8, "pulse_search"),
                      (0x80, "unrecognized_sensor")]:
        s = parse_line(format_line(98, 120, 1.5, exc=bit))
        assert name in s.flags and s.spo2 is None
    assert "exc_unknown_bits" in parse_line(format_line(98, 120, 1.5, exc=0x100000)).flags


def test_alarm_bits():
    s = parse_line(format_line(85, 200, 1.0, alarm=0x2 | 0x4))
    assert {"alarm_spo2_low", "alarm_pr_high"} <= s.flags


def test_alarm_state_bits_are_named_not_unknown():
    """0x10 alarm active, 0x20 alarm silenced, 0x40 low battery (MD PnP poxrad_discrete.h); a Radical-5
    prints the short form ``ALARM=20 EXC=800``. They flag the reading but do not invalidate it."""
    radical5 = parse_line(b"02/22/16 22:47:45 SN=0000056661 SPO2=097% BPM=141 PI=02.10% ALARM=20 EXC=800\r\n")
    assert isinstance(radical5, VitalSample)
    assert radical5.flags == {"alarm_silenced"}
    assert (radical5.spo2, radical5.pulse_rate) == (97, 141)
    for bit, name in [(0x10, "alarm_active"), (0x20, "alarm_silenced"), (0x40, "low_battery")]:
        s = parse_line(format_line(96, 150, 1.0, alarm=bit))
        assert s.flags == {name} and s.spo2 == 96, (bit, s.flags)
    every = parse_line(format_line(85, 200, 1.0, alarm=0x7F)).flags
    assert every == {"alarm_spo2_high", "alarm_spo2_low", "alarm_pr_high", "alarm_pr_low", "alarm_active",
                     "alarm_silenced", "low_battery"}
    assert "alarm_unknown_bits" in parse_line(format_line(96, 150, 1.0, alarm=0x80 | 0x20)).flags


def test_implausible_values_are_rejected_naming_the_field():
    cases = {
        b"SPO2=101% BPM=120": "implausible:SPO2",
        b"SPO2=098% BPM=000": "implausible:BPM",
        b"SPO2=098% BPM=400": "implausible:BPM",
        b"SPO2=098% BPM=120 PI=55.00%": "implausible:PI",
        b"SPO2=9X8% BPM=120": "unparseable:SPO2",
        b"SPO2=098% BPM=120 EXC=00ZZ00": "bad_hex:EXC",
        b"SPO2=098% SPO2=097%": "duplicate:SPO2",
        b"SN=1 DESAT=--": "missing_fields",
        b"": "empty",
        b"SPO2=09\xff% BPM=120": "not_ascii",
        b"x" * 600: "line_too_long",
    }
    for line, reason in cases.items():
        r = parse_line(line)
        assert isinstance(r, Rejection), line
        assert r.reason == reason, (line, r)


def test_limits_are_inclusive_and_neonatal():
    assert parse_line(b"SPO2=100% BPM=300").pulse_rate == 300
    assert parse_line(b"SPO2=100% BPM=025").pulse_rate == 25
    assert parse_line(b"SPO2=100% BPM=024").reason == "implausible:BPM"


_VALID = [
    SAMPLE,
    format_line(None, None, None, exc=0x21),
    format_line(91, 180, 0.4, exc=0x4, alarm=0x2),
    format_line(100, 25, 20.0),
]


@pytest.mark.slow  # ~5-10 s idle; 10,000 hypothesis examples have a fixed per-example cost
@settings(max_examples=10_000, deadline=None, database=None)
@given(st.sampled_from(_VALID), st.binary(max_size=15), st.booleans())
def test_fuzz_never_raises_and_always_explains(mutate, line, program, as_text):
    data = mutate(line, program)
    r = parse_line(data.decode("latin-1") if as_text else data, t_mono_ns=1)
    assert isinstance(r, (VitalSample, Rejection))
    if isinstance(r, Rejection):
        assert r.reason and r.reason != "parser_error", r
    else:
        for v, (lo, hi) in [(r.spo2, (10, 100)), (r.pulse_rate, (25, 300)), (r.perfusion_index, (0, 20))]:
            assert v is None or lo <= v <= hi


@settings(max_examples=300, deadline=None)
@given(st.integers(10, 100), st.integers(25, 300), st.floats(0, 20).map(lambda x: round(x, 2)),
       st.integers(0, 0xFFF), st.integers(0, 0x7F))
def test_format_parse_round_trip(spo2, bpm, pi, exc, alarm):
    s = parse_line(format_line(spo2, bpm, pi, exc=exc, alarm=alarm))
    assert isinstance(s, VitalSample)
    if not s.flags & {"no_sensor", "defective_sensor", "sensor_off", "unrecognized_sensor", "pulse_search"}:
        assert (s.spo2, s.pulse_rate, s.perfusion_index) == (spo2, bpm, pi)
