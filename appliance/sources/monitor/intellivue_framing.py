"""IntelliVue MIB/RS232 transport framing (Data Export Interface, serial variant).

On the wire every message is::

    BOF 0xC0 | 0x11 (protocol id) | 0x01 (message type) | length (2 bytes, big-endian) | data |
    FCS (2 bytes, low byte first) | EOF 0xC1

The FCS is the PPP frame check sequence (RFC 1662): CRC-16-CCITT, reflected polynomial 0x8408, initial
value 0xFFFF, ones' complement of the result, computed over header + data before escaping. Inside the
frame (header, data and FCS) the bytes 0xC0, 0xC1 and 0x7D are sent as 0x7D followed by byte ^ 0x20.

The deframer is streaming: serial reads split frames anywhere, so ``feed`` keeps state across calls and
returns whatever frames completed plus a Rejection for each piece of input it had to throw away. Bytes
outside frames are reported as one ``garbage`` Rejection when the next frame starts (or on ``flush``), so
the result does not depend on how reads happened to split the stream.
"""

from __future__ import annotations

from .types import Rejection

BOF = 0xC0
EOF = 0xC1
ESC = 0x7D
ESC_XOR = 0x20
PROTOCOL_ID = 0x11
MSG_TYPE = 0x01
HEADER_LEN = 4
FCS_LEN = 2
MAX_DATA = 0xFFFF  # the length field is 16 bits

_SPECIAL = frozenset((BOF, EOF, ESC))


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_FCS_TABLE = _make_table()


def fcs16(data: bytes, fcs: int = 0xFFFF) -> int:
    """The running PPP FCS (before the final complement); ``fcs16(x) == 0xF0B8`` for a good x+FCS."""
    for byte in data:
        fcs = (fcs >> 8) ^ _FCS_TABLE[(fcs ^ byte) & 0xFF]
    return fcs


def fcs_bytes(data: bytes) -> bytes:
    """The two FCS bytes as transmitted (ones' complement, low byte first)."""
    value = fcs16(data) ^ 0xFFFF
    return bytes((value & 0xFF, value >> 8))


def escape(data: bytes) -> bytes:
    out = bytearray()
    for byte in data:
        if byte in _SPECIAL:
            out += bytes((ESC, byte ^ ESC_XOR))
        else:
            out.append(byte)
    return bytes(out)


def encode_frame(user_data: bytes) -> bytes:
    """Wrap one message (SPDU or data PDU) for the serial line."""
    if len(user_data) > MAX_DATA:
        raise ValueError(f"user data of {len(user_data)} bytes exceeds the 16-bit length field")
    header = bytes((PROTOCOL_ID, MSG_TYPE)) + len(user_data).to_bytes(2, "big")
    body = header + user_data
    return bytes((BOF,)) + escape(body + fcs_bytes(body)) + bytes((EOF,))


def _check(body: bytes) -> bytes | Rejection:
    """Validate an unescaped frame body (header + data + FCS); return the user data."""
    if len(body) < HEADER_LEN + FCS_LEN:
        return Rejection("short_frame", f"{len(body)} bytes between BOF and EOF")
    if body[0] != PROTOCOL_ID:
        return Rejection("bad_protocol_id", f"byte 0 is 0x{body[0]:02X}, expected 0x11")
    if body[1] != MSG_TYPE:
        return Rejection("bad_message_type", f"byte 1 is 0x{body[1]:02X}, expected 0x01")
    declared = int.from_bytes(body[2:4], "big")
    actual = len(body) - HEADER_LEN - FCS_LEN
    if declared != actual:
        return Rejection("bad_length", f"length field {declared}, frame carries {actual}")
    if fcs16(body) != 0xF0B8:
        got = body[-2] | body[-1] << 8
        want = fcs16(body[:-2]) ^ 0xFFFF
        return Rejection("bad_fcs", f"FCS 0x{got:04X}, computed 0x{want:04X}")
    return body[HEADER_LEN:-FCS_LEN]


class Deframer:
    """Streaming frame decoder. ``feed(chunk)`` -> list of user-data bytes and Rejections, in order."""

    def __init__(self, max_data: int = MAX_DATA) -> None:
        self.max_body = max_data + HEADER_LEN + FCS_LEN
        self._body = bytearray()
        self._in_frame = False
        self._escaped = False
        self._garbage = 0

    def reset(self) -> None:
        self._body.clear()
        self._in_frame = False
        self._escaped = False
        self._garbage = 0

    def _flush_garbage(self, out: list) -> None:
        if self._garbage:
            out.append(Rejection("garbage", f"{self._garbage} bytes outside a frame"))
            self._garbage = 0

    def feed(self, chunk: bytes) -> list[bytes | Rejection]:
        out: list[bytes | Rejection] = []
        for byte in chunk:
            if not self._in_frame:
                if byte == BOF:
                    self._flush_garbage(out)
                    self._in_frame, self._escaped = True, False
                    self._body.clear()
                else:
                    self._garbage += 1
                continue
            if byte == BOF:  # a new frame starts before this one ended
                out.append(Rejection("truncated_frame", f"BOF after {len(self._body)} bytes"))
                self._body.clear()
                self._escaped = False
                continue
            if byte == EOF:
                if self._escaped:
                    # PPP: ESC EOF aborts the frame
                    out.append(Rejection("bad_escape", "0x7D followed by EOF (frame abort)"))
                else:
                    out.append(_check(bytes(self._body)))
                self._in_frame, self._escaped = False, False
                self._body.clear()
                continue
            if self._escaped:
                self._escaped = False
                if byte ^ ESC_XOR not in _SPECIAL:
                    # the sender escapes only C0/C1/7D: anything else means a corrupted byte
                    out.append(Rejection("bad_escape", f"0x7D followed by 0x{byte:02X}"))
                    self._in_frame = False
                    self._body.clear()
                    continue
                self._body.append(byte ^ ESC_XOR)
            elif byte == ESC:
                self._escaped = True
                continue
            else:
                self._body.append(byte)
            if len(self._body) > self.max_body:
                out.append(Rejection("oversize", f"more than {self.max_body} bytes without EOF"))
                self._in_frame, self._escaped = False, False
                self._body.clear()
        return out

    def flush(self) -> list[Rejection]:
        """End of stream (or port closed): report what is pending as rejected and start afresh."""
        out: list = []
        self._flush_garbage(out)
        if self._in_frame:
            out.append(Rejection("truncated_frame", f"stream ended {len(self._body)} bytes into a frame"))
        self.reset()
        return out
