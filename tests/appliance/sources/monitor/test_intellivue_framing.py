"""MIB/RS232 framing, checked against frames built here from the published algorithm (RFC 1662)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sources.monitor.intellivue_framing import Deframer, encode_frame, fcs_bytes
from appliance.sources.monitor.types import Rejection

REASONS = {"garbage", "truncated_frame", "bad_escape", "short_frame", "bad_protocol_id", "bad_message_type",
           "bad_length", "bad_fcs", "oversize"}


def ppp_fcs_bitwise(data: bytes) -> int:
    """RFC 1662 FCS-16, bit by bit: reflected poly 0x8408, init 0xFFFF, ones' complement."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def reference_frame(user: bytes) -> bytes:
    body = bytes([0x11, 0x01, len(user) >> 8, len(user) & 0xFF]) + user
    fcs = ppp_fcs_bitwise(body)
    body += bytes([fcs & 0xFF, fcs >> 8])
    escaped = bytearray()
    for b in body:
        escaped += bytes([0x7D, b ^ 0x20]) if b in (0xC0, 0xC1, 0x7D) else bytes([b])
    return b"\xc0" + bytes(escaped) + b"\xc1"


def test_fcs_matches_the_rfc_check_value():
    # CRC-16/X-25 (the PPP FCS) of "123456789" is 0x906E, a published check value
    assert ppp_fcs_bitwise(b"123456789") == 0x906E
    assert fcs_bytes(b"123456789") == bytes([0x6E, 0x90])


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_encode_equals_independent_reference(user):
    assert encode_frame(user) == reference_frame(user)
    assert Deframer().feed(reference_frame(user)) == [user]


def test_escaping_of_special_bytes_in_data_and_fcs():
    user = bytes([0xC0, 0xC1, 0x7D, 0x00, 0x5D])
    frame = encode_frame(user)
    assert frame == reference_frame(user)
    inner = frame[1:-1]
    assert 0xC0 not in inner and 0xC1 not in inner
    assert inner[4:10] == bytes([0x7D, 0xE0, 0x7D, 0xE1, 0x7D, 0x5D])
    # find a payload whose FCS itself needs escaping, and check it survives
    for i in range(5000):
        user = i.to_bytes(2, "big")
        fcs = ppp_fcs_bitwise(b"\x11\x01\x00\x02" + user)
        if {fcs & 0xFF, fcs >> 8} & {0xC0, 0xC1, 0x7D}:
            break
    assert encode_frame(user) == reference_frame(user)
    assert Deframer().feed(encode_frame(user)) == [user]


def test_split_reads_at_every_byte_boundary():
    users = [b"\xe1\x00\x00\x02hello", bytes([0xC0, 0x7D, 0xC1]) * 3, b""]
    stream = b"junk" + b"".join(encode_frame(u) for u in users)
    whole = Deframer().feed(stream)
    assert [x for x in whole if not isinstance(x, Rejection)] == users
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            d = Deframer()
            got = d.feed(stream[:i]) + d.feed(stream[i:j]) + d.feed(stream[j:])
            assert got == whole, (i, j)


def test_byte_by_byte():
    users = [bytes(range(256)), b"x"]
    d = Deframer()
    got = []
    for b in b"".join(encode_frame(u) for u in users):
        got += d.feed(bytes([b]))
    assert got == users


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (lambda f: f[:5] + b"H" + f[6:], "bad_fcs"),  # one data bit flipped ("h" -> "H")
        (lambda f: f[:3] + b"\x09" + f[4:], "bad_length"),  # length field 0x0009 but 5 data bytes
        (lambda f: b"\xc0\x12" + f[2:], "bad_protocol_id"),
        (lambda f: b"\xc0\x11\x02" + f[3:], "bad_message_type"),
        (lambda f: b"\xc0\x11\x01\xc1", "short_frame"),
        (lambda f: f[:-1] + b"\x7d\xc1", "bad_escape"),  # escape then EOF: frame abort
        (lambda f: f[:5] + b"\x7d\x41" + f[5:], "bad_escape"),  # escape of a byte that needs none
        (lambda f: f[:6] + f, "truncated_frame"),  # BOF inside a frame
        (lambda f: b"noise" + f, "garbage"),
    ],
)
def test_rejections_name_the_fault(raw, reason):
    good = encode_frame(b"hello")
    d = Deframer()
    out = d.feed(raw(good)) + d.flush()
    reasons = [x.reason for x in out if isinstance(x, Rejection)]
    assert reason in reasons, out


def test_oversize_and_recovery():
    d = Deframer(max_data=16)
    out = d.feed(b"\xc0" + b"A" * 100 + encode_frame(b"ok"))
    assert out[0] == Rejection("oversize", out[0].detail)
    assert out[-1] == b"ok"


def test_flush_reports_pending():
    d = Deframer()
    assert d.feed(b"abc" + encode_frame(b"z")[:4]) == [Rejection("garbage", "3 bytes outside a frame")]
    assert [r.reason for r in d.flush()] == ["truncated_frame"]


_FRAMES = [encode_frame(u) for u in (b"\xe1\x00\x00\x02" + bytes(range(40)), bytes([0xC0, 0xC1, 0x7D] * 5), b"a")]


@pytest.mark.slow  # ~5-10 s idle: 10,000 hypothesis examples
@settings(max_examples=10_000, deadline=None, database=None)
@given(st.sampled_from(_FRAMES), st.binary(max_size=15), st.integers(0, 60))
def test_fuzz_deframer(mutate, frame, program, split):
    data = mutate(frame + frame, program)
    d = Deframer()
    out = d.feed(data[:split]) + d.feed(data[split:]) + d.flush()
    for item in out:
        assert isinstance(item, (bytes, Rejection))
        if isinstance(item, Rejection):
            assert item.reason in REASONS
        else:
            # anything accepted must be a frame that re-encodes inside the input (FCS-checked)
            assert encode_frame(item)[1:-1] in data
    if data == frame + frame:
        assert out == [reference_frame_user(frame)] * 2


def reference_frame_user(frame: bytes) -> bytes:
    return Deframer().feed(frame)[0]
