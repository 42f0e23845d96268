"""HL7 v2 ORU^R01 in the IHE PCD-01 (Communicate PCD Data) shape, and MLLP framing/transport.

Message shape (HL7 2.6, segments separated by CR)::

    MSH|^~\\&|NEOPAIN^<device>|<site>|<recv app>|<recv fac>|<now>||ORU^R01^ORU_R01|<message id>|P|2.6|||AL|NE||
        UNICODE UTF-8|||IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO
    PID|||<MRN>^^^<authority>[&<universal id>&<type>]^MR||<family>^<given>^^^^^L||<birth date>|<sex>
                                                  (PID-3 and PID-5 empty when no patient is in the bed: see below)
    PV1||I|<site>^^<bed>                          (assigned location: point of care ^ room ^ bed)
    OBR|1||<message id>^NEOPAIN|NIPS^Neonatal pain assessment^99NPN|||<window start>|<window end>
    OBX|1|NM|NIPS-TOTAL^...^99NPN|1.1.1.1|<nips>|262656^MDC_DIM_DIMLESS^MDC|0-7||||F|||<window end>||||<device>^NEOPAIN
    OBX|2|NM|PAIN-INTENSITY^...^99NPN|1.1.1.2|<intensity>|262656^MDC_DIM_DIMLESS^MDC|0-10|...
    OBX|n|NM|NIPS-<ITEM>^...^99NPN|1.1.1.n|...   (per-item NIPS when the score carries them)

Why these choices: there is no MDC (IEEE 11073-10101) term for a NIPS score, so observation identifiers use a
local coding system (HL7 reserves names starting ``99`` for local tables); the *unit* does have an MDC term,
dimensionless (262656, MDC_DIM_DIMLESS). OBX-4 uses PCD-01's dotted containment notation
(MDS.VMD.CHANNEL.METRIC). MSH-10 (control id) is the score's message id, so a receiver can drop a re-sent
message, and the ACK's MSA-2 is checked against it.

Patient identity: the bridge looks the bed up in the station's ``patients.PatientRegistry`` (fed by the ADT
listener, ``appliance.station.adt``). With a patient, PID-3 is the MRN as a CX with its assigning authority
and identifier type ``MR``, PID-5 the name as an XPN (name type ``L``), PID-7/PID-8 birth date and sex when
known; the message then validates against hl7apy's HL7 2.6 ORU_R01 structure (STRICT). Without one, PID-3/5
stay empty and only PV1-3 says where the score comes from: a receiver files it by location, and nobody's record
gets a guessed patient's score.

Escaping: every text value goes through ``escape`` (``\\E\\ \\F\\ \\S\\ \\T\\ \\R\\``, CR/LF as ``\\X0D\\``/``\\X0A\\``) so a
device id or site name can never break the segment structure.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from datetime import timedelta, tzinfo
from typing import Any, Mapping

from appliance.mqtt import messages
from appliance.isotime import parse_utc
from appliance.station.patients import Patient

FIELD_SEP = "|"
ENCODING_CHARS = "^~\\&"  # component, repetition, escape, subcomponent
SEGMENT_SEP = "\r"
MLLP_START = b"\x0b"
MLLP_END = b"\x1c\x0d"
LOCAL_CODING_SYSTEM = "99NPN"
MDC_DIMLESS = "262656^MDC_DIM_DIMLESS^MDC"
PCD01_PROFILE = "IHE_PCD_001^IHE PCD^1.3.6.1.4.1.19376.1.6.1.1.1^ISO"

_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": "\\X0D\\", "\n": "\\X0A\\"}
_UNESCAPES = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}


# ------------------------------------------------------------------------------------------ escaping
def escape(text: str) -> str:
    """Escape HL7 delimiters in a text value (character by character, so ``\\`` is escaped exactly once)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in str(text))


def unescape(text: str) -> str:
    """Inverse of ``escape`` (also decodes ``\\Xhh..\\`` hex sequences); raises ValueError on a broken one."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        j = text.find("\\", i + 1)
        if j < 0:
            raise ValueError(f"HL7 escape at position {i}: no closing '\\'")
        seq = text[i + 1:j]
        if seq in _UNESCAPES:
            out.append(_UNESCAPES[seq])
        elif seq.startswith("X") and len(seq) > 1 and len(seq) % 2 == 1:
            out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
        else:
            raise ValueError(f"HL7 escape at position {i}: unknown sequence \\{seq}\\")
        i = j + 1
    return "".join(out)


# ------------------------------------------------------------------------------------------ building
def hl7_timestamp(value: str | datetime) -> str:
    """HL7 DTM ``YYYYMMDDHHMMSS.SSS+0000`` from an ISO 8601 string with zone or an aware datetime (in UTC)."""
    if isinstance(value, str):
        value = parse_utc(value, "timestamp")
    if value.tzinfo is None:
        raise ValueError(f"timestamp: {value!r} has no time zone")
    u = value.astimezone(timezone.utc)
    return u.strftime("%Y%m%d%H%M%S") + f".{u.microsecond // 1000:03d}+0000"


_DTM_FORMATS = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def parse_hl7_timestamp(text: str, where: str, *, local_tz: tzinfo | None = None) -> datetime:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]``) as an aware UTC datetime.

    A time without an offset is read in ``local_tz`` (hospital feeds often send local time); with no
    ``local_tz`` it is refused: local or UTC cannot be guessed. ``ValueError`` names ``where`` (e.g. "EVN-6").
    """
    value = text.strip().split("^")[0]  # TS (HL7 < 2.6) carries the time in its first component
    body, offset = value, None
    for sign in "+-":
        if sign in value[4:]:
            body, _, off = value.rpartition(sign)
            if len(off) != 4 or not off.isdigit() or int(off[:2]) > 14 or int(off[2:]) > 59:
                raise ValueError(f"{where}: bad UTC offset in {text!r} (expected +HHMM)")
            minutes = int(off[:2]) * 60 + int(off[2:])
            offset = timezone(timedelta(minutes=minutes if sign == "+" else -minutes))
            break
    whole, _, fraction = body.partition(".")
    fmt = _DTM_FORMATS.get(len(whole))
    if fmt is None or not whole.isdigit() or (fraction and (not fraction.isdigit() or len(whole) != 14)):
        raise ValueError(f"{where}: {text!r} is not an HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    try:
        t = datetime.strptime(whole, fmt)
    except ValueError as exc:
        raise ValueError(f"{where}: {text!r} is not a valid date/time ({exc})") from None
    if fraction:
        t = t.replace(microsecond=int(fraction[:6].ljust(6, "0")))
    zone = offset or local_tz
    if zone is None:
        raise ValueError(f"{where}: {text!r} has no UTC offset and no local time zone is configured")
    return t.replace(tzinfo=zone).astimezone(timezone.utc)  # a zoneinfo zone applies its DST rules here


def _number(v: float) -> str:
    """HL7 NM: plain decimal, no exponent, no trailing zeros."""
    text = f"{float(v):.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _score_value(score: Mapping[str, Any], key: str, hi: float) -> float:
    v = score.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
        raise ValueError(f"score.{key}: expected a number in [0, {hi}], got {v!r}")
    return float(v)


def _window(score: Mapping[str, Any], key: str) -> str:
    w = score.get("window")
    if not isinstance(w, Mapping) or not isinstance(w.get(key), str):
        raise ValueError(f"score.window.{key}: missing")
    return hl7_timestamp(w[key])


def build_oru_r01(
    score: Mapping[str, Any],
    *,
    site: str | None = None,
    bed: str | None = None,
    patient: Patient | None = None,
    receiving_application: str = "",
    receiving_facility: str = "",
    now: datetime | None = None,
) -> str:
    """One PCD-01 ORU^R01 message (segments joined by CR, no MLLP framing) for one score message.

    ``patient``: who is in the bed for this score's window (None: PID-3/5 stay empty, see the module doc).
    Raises ``ValueError`` naming the score field when the message lacks what the segments need.
    """
    message_id = score.get("message_id")
    device_id = score.get("device_id")
    for name, v in (("message_id", message_id), ("device_id", device_id)):
        if not isinstance(v, str) or not v:
            raise ValueError(f"score.{name}: expected a non-empty string, got {v!r}")
    assert isinstance(message_id, str) and isinstance(device_id, str)
    nips = _score_value(score, "nips", messages.NIPS_MAX)
    intensity = _score_value(score, "intensity", messages.INTENSITY_MAX)
    start, end = _window(score, "start_utc"), _window(score, "end_utc")
    sent = hl7_timestamp(now or datetime.now(timezone.utc))
    e = escape

    msh = [
        "MSH", ENCODING_CHARS, f"NEOPAIN^{e(device_id)}", e(site or ""), e(receiving_application),
        e(receiving_facility), sent, "", "ORU^R01^ORU_R01", e(message_id), "P", "2.6", "", "", "AL", "NE", "",
        "UNICODE UTF-8", "", "", PCD01_PROFILE,
    ]
    # MSH-1 is the field separator itself: joining "MSH" and MSH-2 with "|" produces it.
    segments = [FIELD_SEP.join(msh)]
    segments.append(FIELD_SEP.join(pid_fields(patient)))
    if bed:
        segments.append(FIELD_SEP.join(["PV1", "", "I", f"{e(site or '')}^^{e(bed)}"]))
    segments.append(FIELD_SEP.join(
        ["OBR", "1", "", f"{e(message_id)}^NEOPAIN", f"NIPS^Neonatal pain assessment^{LOCAL_CODING_SYSTEM}",
         "", "", start, end]))

    rows: list[tuple[str, str, float, str]] = [
        ("NIPS-TOTAL", "NIPS total score", nips, f"0-{messages.NIPS_MAX}"),
        ("PAIN-INTENSITY", "Pain intensity 0-10", intensity, f"0-{messages.INTENSITY_MAX}"),
    ]
    items = score.get("nips_items") or {}
    for item, hi in messages.NIPS_ITEMS.items():
        if item in items:
            v = items[item]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise ValueError(f"score.nips_items.{item}: expected a number in [0, {hi}], got {v!r}")
            rows.append((f"NIPS-{item.upper().replace('_', '-')}", f"NIPS {item.replace('_', ' ')}", float(v),
                         f"0-{hi}"))
    equipment = f"{e(device_id)}^NEOPAIN"
    for n, (code, text, value, ref_range) in enumerate(rows, start=1):
        obx = ["OBX", str(n), "NM", f"{code}^{e(text)}^{LOCAL_CODING_SYSTEM}", f"1.1.1.{n}", _number(value),
               MDC_DIMLESS, ref_range, "", "", "", "F", "", "", end, "", "", "", equipment]
        segments.append(FIELD_SEP.join(obx))
    return SEGMENT_SEP.join(segments) + SEGMENT_SEP


def pid_fields(patient: Patient | None) -> list[str]:
    """The PID segment's fields (``["PID", PID-1, ...]``): CX in PID-3, XPN in PID-5, DT in PID-7, sex in PID-8."""
    if patient is None:
        return ["PID", "", "", ""]
    e = escape
    authority = e(patient.authority)
    if patient.authority_id:  # HD: namespace & universal id & universal id type (subcomponents)
        authority += f"&{e(patient.authority_id)}&{e(patient.authority_id_type or '')}"
    birth = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    fields = ["PID", "", "", f"{e(patient.mrn)}^^^{authority}^MR", "", f"{e(patient.family)}^{e(patient.given)}^^^^^L",
              "", birth, patient.sex or ""]
    while fields[-1] == "":
        fields.pop()
    return fields


def parse_segments(message: str) -> list[list[str]]:
    """Split a message into segments and fields.

    For MSH, ``fields[1]`` is MSH-2 (MSH-1 is the separator); for every other segment ``fields[n]`` is
    field n. Components are left joined; use ``escape``/``unescape`` on values.
    """
    return [seg.split(FIELD_SEP) for seg in message.replace("\n", "\r").split(SEGMENT_SEP) if seg]


# ------------------------------------------------------------------------------------------ MLLP
def mllp_frame(message: str) -> bytes:
    """``0x0B`` + UTF-8 message + ``0x1C 0x0D`` (the Minimal Lower Layer Protocol block)."""
    data = message.encode("utf-8")
    if b"\x0b" in data or b"\x1c" in data:
        raise ValueError("HL7 message contains an MLLP framing byte (0x0B or 0x1C)")
    return MLLP_START + data + MLLP_END


class MllpDecoder:
    """Incremental MLLP decoder for a TCP stream: ``feed(bytes)`` returns the complete messages so far.

    Bytes before a start block are discarded (line noise, a half message from a previous connection).
    """

    def __init__(self, max_message_bytes: int = 1 << 20) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        out: list[str] = []
        while True:
            start = self._buf.find(MLLP_START)
            if start < 0:
                self._buf.clear()
                return out
            if start:
                del self._buf[:start]
            end = self._buf.find(MLLP_END)
            if end < 0:
                if len(self._buf) > self._max:
                    raise ValueError(f"MLLP message longer than {self._max} bytes without an end block")
                return out
            out.append(self._buf[1:end].decode("utf-8"))
            del self._buf[:end + 2]


class MllpError(OSError):
    """Sending failed or the receiver did not accept; ``retry`` says whether resending may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class Ack:
    code: str  # AA/CA accepted; AE/CE error; AR/CR rejected
    control_id: str
    text: str

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def parse_ack(message: str) -> Ack:
    """Read MSA-1/MSA-2/MSA-3 from an ACK; ValueError when there is no MSA segment."""
    for fields in parse_segments(message):
        if fields[0] == "MSA":
            fields += [""] * (4 - len(fields))
            return Ack(code=fields[1], control_id=fields[2], text=unescape(fields[3]))
    raise ValueError("HL7 ACK: no MSA segment")


#: HL7 table 0357 (message error condition codes) used in ERR-3.
ERR_REQUIRED_FIELD_MISSING = 101
ERR_DATA_TYPE = 102
ERR_TABLE_VALUE = 103
ERR_UNSUPPORTED_MESSAGE_TYPE = 200
ERR_UNSUPPORTED_EVENT = 201
ERR_UNSUPPORTED_VERSION = 203
ERR_UNKNOWN_KEY = 204
ERR_APPLICATION = 207
_ERR_TEXT = {101: "Required field missing", 102: "Data type error", 103: "Table value not found",
             200: "Unsupported message type", 201: "Unsupported event code", 203: "Unsupported version id",
             204: "Unknown key identifier",
             207: "Application internal error"}


@dataclass(frozen=True)
class ErrorLocation:
    """Where a received message is wrong (HL7 ERL, ERR-2): segment, field, and component when known."""

    segment: str
    field: int
    component: int | None = None
    sequence: int = 1

    def __str__(self) -> str:  # "PID-3.4": how HL7 people name a place
        return f"{self.segment}-{self.field}" + (f".{self.component}" if self.component else "")

    def erl(self) -> str:
        return f"{self.segment}^{self.sequence}^{self.field}^1" + (f"^{self.component}" if self.component else "")


def build_ack(message: str, code: str = "AA", text: str = "", *, location: ErrorLocation | None = None,
              error_code: int | None = None, now: datetime | None = None) -> str:
    """An ACK for ``message``: MSH (sender and receiver swapped; ``ACK^<trigger>^ACK``), MSA and, for an error
    with a ``location``, an ERR naming the segment/field (ERR-2), the table 0357 condition (ERR-3) and
    severity E (ERR-4). MSA-3 carries ``text`` too, for receivers that only read MSA."""
    msh = parse_segments(message)[0]
    if msh[0] != "MSH" or len(msh) < 12:
        raise ValueError("HL7: first segment is not a complete MSH")
    trigger = msh[8].split("^")[1] if len(msh[8].split("^")) > 1 else ""
    ack_msh = ["MSH", msh[1], msh[4], msh[5], msh[2], msh[3], hl7_timestamp(now or datetime.now(timezone.utc)), "",
               f"ACK^{trigger}^ACK", msh[9] + "-ACK", "P", msh[11]]
    segments = [FIELD_SEP.join(ack_msh), FIELD_SEP.join(["MSA", code, msh[9], escape(text)])]
    if location is not None and code not in ("AA", "CA"):
        condition = error_code or ERR_APPLICATION
        segments.append(FIELD_SEP.join(["ERR", "", location.erl(),
                                        f"{condition}^{_ERR_TEXT.get(condition, '')}^HL70357", "E", "", "", "",
                                        escape(text)]))
    return SEGMENT_SEP.join(segments) + "\r"


class MllpClient:
    """A TCP MLLP sender that keeps its connection and reconnects on the next send after a failure.

    ``send`` waits for the ACK and checks that MSA-2 names our control id: an accepted ACK is the only proof
    of delivery. Network errors and timeouts are ``MllpError(retry=True)``; a NAK (AE/AR/CE/CR) is
    ``retry=False`` because resending the same content gets the same answer.
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._sock: socket.socket | None = None
        self._decoder = MllpDecoder()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            self._decoder = MllpDecoder()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def send(self, message: str) -> Ack:
        control_id = parse_segments(message)[0][9]
        try:
            sock = self._connect()
            sock.sendall(mllp_frame(message))
            while True:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed before the ACK")
                for reply in self._decoder.feed(data):
                    ack = parse_ack(reply)
                    if ack.control_id != control_id:
                        continue  # an ACK for an earlier message we gave up on: not ours
                    if not ack.accepted:
                        raise MllpError(f"MLLP {self.host}:{self.port}: {ack.code} for {control_id}: {ack.text}",
                                        retry=False)
                    return ack
        except MllpError:
            raise
        except (OSError, ValueError) as exc:
            self.close()
            raise MllpError(f"MLLP {self.host}:{self.port}: {exc}", retry=True) from exc


def parse_host_port(text: str, *, option: str = "--mllp") -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port), with an error naming the option."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{option}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
