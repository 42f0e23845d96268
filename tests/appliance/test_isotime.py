"""ISO 8601 parsing gives the same datetime on Python 3.10 (the device) as 3.11's fromisoformat."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.isotime import parse_iso8601, parse_utc
from tests.test_python_compat import python310

REPO = Path(__file__).resolve().parents[2]
needs_311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="compares with 3.11's own fromisoformat")

# What other producers write: Go RFC3339Nano, Java Instant, FHIR instants, HL7-ish offsets, our publisher.
SAMPLES = [
    "2026-11-25T17:25:43Z", "2026-11-25T17:25:43.123Z", "2026-11-25T17:25:43.12Z", "2026-11-25T17:25:43.1Z",
    "2026-11-25T17:25:43.123456789Z", "2026-11-25T17:25:43.1234567+01:00", "2026-11-25T17:25:43+0000",
    "2026-11-25T17:25:43.5-0530", "2026-11-25T17:25:43+01", "2026-11-25T17:25-05", "2026-11-25 17:25:43Z",
    "2026-11-25T17:25:43,25Z", "2026-11-25T17:25Z", "2026-11-25T17:25:43", "2026-11-25",
]
BAD = ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-25T25:00:00Z", "2026-11-25T17:25:43+2500",
       "2026-11-25T17:25:43ZZ"]


@needs_311
@pytest.mark.parametrize("text", SAMPLES)
def test_same_as_python_311(text: str) -> None:
    assert parse_iso8601(text) == datetime.fromisoformat(text)
    assert parse_iso8601(text).utcoffset() == datetime.fromisoformat(text).utcoffset()


@pytest.mark.parametrize("text", BAD)
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso8601(text)


@settings(max_examples=150, deadline=None)
@given(when=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
       digits=st.integers(1, 9), minutes=st.integers(-14 * 60, 14 * 60), style=st.sampled_from(["Z", ":", "", "h"]))
def test_any_fraction_length_and_offset_style(when: datetime, digits: int, minutes: int, style: str) -> None:
    """Fractions of 1-9 digits are truncated to microseconds; every offset spelling reads the same."""
    if style == "h":
        minutes -= minutes % 60 if minutes >= 0 else -(-minutes % 60)
    fraction = f"{when.microsecond:06d}{when.microsecond % 1000:03d}"[:digits]
    sign, off = ("-", -minutes) if minutes < 0 else ("+", minutes)
    zone = {"Z": "Z", ":": f"{sign}{off // 60:02d}:{off % 60:02d}", "": f"{sign}{off // 60:02d}{off % 60:02d}",
            "h": f"{sign}{off // 60:02d}"}[style]
    parsed = parse_iso8601(f"{when:%Y-%m-%dT%H:%M:%S}.{fraction}{zone}")
    want_us = int(fraction.ljust(6, "0")[:6])
    tz = timezone.utc if style == "Z" else timezone(timedelta(minutes=minutes))
    assert parsed == when.replace(microsecond=want_us, tzinfo=tz)


def test_python_310_reads_what_311_reads() -> None:
    """The point of the module: under a real 3.10 interpreter, every sample parses to 3.11's answer."""
    exe = python310()
    if exe is None:
        pytest.skip("no Python 3.10 here")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from appliance.isotime import parse_iso8601; "
            "print(json.dumps([parse_iso8601(s).isoformat() for s in json.loads(sys.argv[2])]))")
    result = subprocess.run([exe, "-I", "-c", code, str(REPO), json.dumps(SAMPLES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got == [parse_iso8601(s).isoformat() for s in SAMPLES]
    if sys.version_info >= (3, 11):
        assert got == [datetime.fromisoformat(s).isoformat() for s in SAMPLES]


def test_parse_utc_converts_to_utc_and_refuses_a_zoneless_time_by_name() -> None:
    t = parse_utc("2026-11-25T18:30:00+01:00", "score.window.end_utc")
    assert t.tzinfo == timezone.utc and (t.hour, t.minute) == (17, 30)
    with pytest.raises(ValueError, match=r"^score\.window\.end_utc: no time zone in"):
        parse_utc("2026-11-25T18:30:00", "score.window.end_utc")
    with pytest.raises(ValueError, match=r"^timestamp: not ISO 8601: 'yesterday'"):
        parse_utc("yesterday", "timestamp")
