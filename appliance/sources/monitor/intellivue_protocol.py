"""IntelliVue Data Export messages (the user data inside a MIB/RS232 frame): encode and decode.

Implemented, with the real byte layout (all integers big-endian):

- Association (session layer SPDUs): request CN 0x0D, accept AC 0x0E, refuse RF 0x0C, release request FN
  0x09, release response DN 0x0A, abort AB 0x19. Each is ``SI | LI | body`` with LI one byte, or 0xFF and
  two bytes. The request carries the MDSEUserInfoStd with a poll profile, as VSCaptureMP sends it.
- Data PDUs: ``SPpdu (session_id 0xE100, p_context_id) | ROapdus (ro_type, length) | ROIV/RORS/ROLRS/ROER
  apdu (invoke_id, command_type, length) | operation``:
  MDS create event report (NOM_NOTI_MDS_CREAT 0x0D06) and its result; poll requests NOM_ACT_POLL_MDIB_DATA
  0x0C16 and _EXT 0xF13B for numerics (class 6) or real-time sample arrays (class 9); their (linked)
  results ``PollMdibDataReply(Ext) -> PollInfoList -> SingleContextPoll -> ObservationPoll ->
  AttributeList -> AVA``.
- Attribute values: NuObsValue (NOM_ATTR_NU_VAL_OBS 0x0950), SaObsValue (NOM_ATTR_SA_VAL_OBS 0x096E),
  TextId label (0x0924), sample period (NOM_ATTR_TIME_PD_SAMP 0x098D, RelativeTime in 1/8 ms), SaSpec
  (0x096D) and ScaleRangeSpec16 (0x096F) to turn samples into mV; FLOAT-Type (8-bit exponent, 24-bit
  mantissa, value = m * 10^e, with NaN/NRes/+INF/-INF) and MeasurementState validity bits.

Simplified (documented, not hidden):

- The ISO presentation/ACSE wrapping of the association messages (BER with indefinite lengths) is emitted
  as fixed bytes and, on receipt, only the SPDU type and LI are checked; the accept message the emulator
  sends is shaped like a real one but is not a byte copy of a monitor's.
- Compound values (NU_CMPD_VAL_OBS, SA_CMPD_VAL_OBS), alerts, patient demographics, GET/SET and the RTSA
  priority list are not implemented: such messages decode to a Rejection ``unsupported:...``.
- The emulator sends SaSpec/scale/sample period with every wave reply; a real monitor may send them only
  once, so the client caches them per object handle (``WaveCache``).
"""

from __future__ import annotations

import datetime as _dt
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from .types import Rejection

# --- session / presentation --------------------------------------------------------------------
CN_SPDU_SI, AC_SPDU_SI, RF_SPDU_SI = 0x0D, 0x0E, 0x0C
FN_SPDU_SI, DN_SPDU_SI, AB_SPDU_SI = 0x09, 0x0A, 0x19
SESSION_ID = 0xE100
P_CONTEXT_ID = 2
# --- remote operations ----------------------------------------------------------------------------
ROIV_APDU, RORS_APDU, ROER_APDU, ROLRS_APDU = 1, 2, 3, 5
CMD_EVENT_REPORT, CMD_CONFIRMED_EVENT_REPORT, CMD_CONFIRMED_ACTION = 0, 1, 7
RORLS_FIRST, RORLS_NOT_FIRST_NOT_LAST, RORLS_LAST = 1, 2, 3
# --- objects, actions, events ---------------------------------------------------------------------
NOM_PART_OBJ = 1
NOM_MOC_VMO_METRIC_NU = 6
NOM_MOC_VMO_METRIC_SA_RT = 9
NOM_MOC_VMS_MDS = 33
NOM_ACT_POLL_MDIB_DATA = 0x0C16
NOM_ACT_POLL_MDIB_DATA_EXT = 0xF13B
NOM_NOTI_MDS_CREAT = 0x0D06
# --- attributes ---------------------------------------------------------------------------------
NOM_ATTR_ID_HANDLE = 0x0921
NOM_ATTR_ID_LABEL = 0x0924
NOM_ATTR_NU_VAL_OBS = 0x0950
NOM_ATTR_SA_SPECN = 0x096D
NOM_ATTR_SA_VAL_OBS = 0x096E
NOM_ATTR_SCALE_SPECN_I16 = 0x096F
NOM_ATTR_TIME_ABS = 0x0987
NOM_ATTR_TIME_PD_SAMP = 0x098D
NOM_ATTR_TIME_REL = 0x098F
NOM_ATTR_UNIT_CODE = 0x0996
NOM_ATTR_TIME_PD_POLL = 0xF13E
NOM_POLL_PROFILE_SUPPORT = 0x0001
NOM_ATTR_POLL_PROFILE_EXT = 0xF001
# --- physiological ids, labels, units -------------------------------------------------------------
NOM_ECG_CARD_BEAT_RATE = 0x4182
NOM_ECG_CARD_BEAT_RATE_BTB = 0x418A
NOM_PLETH_PULS_RATE = 0x4822
NOM_PULS_OXIM_SAT_O2 = 0x4BB8
NOM_PULS_OXIM_PERF_REL = 0x4BB0
NOM_ECG_ELEC_POTL_II = 0x0102
NLS_NOM_ECG_ELEC_POTL_II = 0x00020102
NLS_NOM_PULS_OXIM_PLETH = 0x00024BB4
NOM_DIM_PERCENT = 0x0220
NOM_DIM_BEAT_PER_MIN = 0x0AA0
NOM_DIM_MILLI_VOLT = 0x10B2
WAVE_LABELS = {NLS_NOM_ECG_ELEC_POTL_II: "ECG_II", NLS_NOM_PULS_OXIM_PLETH: "PLETH"}
RELATIVE_TIME_HZ = 8000  # RelativeTime ticks: 1/8 ms

# --- MeasurementState -------------------------------------------------------------------------------
MEASUREMENT_STATE_BITS = {
    0x8000: "invalid",
    0x4000: "questionable",
    0x2000: "unavailable",
    0x1000: "calibration_ongoing",
    0x0800: "test_data",
    0x0400: "demo_data",
    0x0080: "validated_data",
    0x0040: "early_indication",
    0x0020: "msmt_ongoing",
    0x0002: "in_alarm",
    0x0001: "alarm_inhibited",
}
# A value in one of these states must not be used as a measurement.
STATE_UNUSABLE = 0x8000 | 0x2000 | 0x1000 | 0x0800
STATE_REPORTED = 0x4000 | 0x0400 | 0x0040  # usable but worth a flag


def state_flags(state: int) -> frozenset[str]:
    return frozenset(name for bit, name in MEASUREMENT_STATE_BITS.items() if state & bit)


# --- FLOAT-Type ---------------------------------------------------------------------------------
FLOAT_NAN = 0x007FFFFF
FLOAT_NRES = 0x00800000
FLOAT_POS_INF = 0x007FFFFE
FLOAT_NEG_INF = 0x00800002
_SPECIAL_MANTISSA = {0x7FFFFF: "nan", 0x800000: "nres", 0x7FFFFE: "+inf", 0x800002: "-inf", 0x800001: "reserved"}


def decode_float(word: int) -> tuple[float | None, str | None]:
    """IEEE 11073 FLOAT-Type -> (value, special). Special values give (None, 'nan'|'nres'|...)."""
    mantissa = word & 0xFFFFFF
    if mantissa in _SPECIAL_MANTISSA:
        return None, _SPECIAL_MANTISSA[mantissa]
    exponent = (word >> 24) & 0xFF
    exponent -= 0x100 if exponent & 0x80 else 0
    mantissa -= 0x1000000 if mantissa & 0x800000 else 0
    # round to the digits the exponent carries, so 97.6 does not come back as 97.60000000000001
    return round(mantissa * 10.0**exponent, max(0, -exponent)), None


def encode_float(value: float | None, decimals: int = 2, special: str = "nan") -> int:
    """Encode with at most ``decimals`` decimals; None -> the given special value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {"nan": FLOAT_NAN, "nres": FLOAT_NRES}[special]
    if math.isinf(value):
        return FLOAT_POS_INF if value > 0 else FLOAT_NEG_INF
    exponent = -decimals
    mantissa = round(value * 10**decimals)
    while mantissa % 10 == 0 and mantissa and exponent < 0:  # shortest exact form
        mantissa //= 10
        exponent += 1
    while abs(mantissa) > 0x7FFFFD:  # keep clear of the special mantissas
        mantissa = round(mantissa / 10)
        exponent += 1
    if not -128 <= exponent <= 127:
        raise ValueError(f"value {value!r} cannot be represented as FLOAT-Type")
    return ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)


# --- byte cursor --------------------------------------------------------------------------------
class _Short(Exception):
    """Raised inside the decoder when a field runs past the end; turned into a Rejection."""


class _Cursor:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int, name: str) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short(f"{self.what}.{name}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u16(self, name: str) -> int:
        return int.from_bytes(self.take(2, name), "big")

    def u32(self, name: str) -> int:
        return int.from_bytes(self.take(4, name), "big")

    def sub(self, name: str) -> _Cursor:
        """Read a u16 length and return a cursor over exactly that many bytes."""
        length = self.u16(f"{name}.length")
        return _Cursor(self.take(length, name), name)

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


class _BadLength(Exception):
    pass


def _expect_end(cur: _Cursor) -> None:
    if cur.left:
        raise _BadLength(f"{cur.what}: {cur.left} bytes beyond the declared content")


# --- messages -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AssociationRequest:
    body: bytes


@dataclass(frozen=True)
class AssociationResult:
    accepted: bool


@dataclass(frozen=True)
class ReleaseRequest:
    pass


@dataclass(frozen=True)
class ReleaseResponse:
    pass


@dataclass(frozen=True)
class Abort:
    pass


@dataclass(frozen=True)
class MdsCreateEvent:
    invoke_id: int
    event_time: int
    attributes: dict[int, bytes]


@dataclass(frozen=True)
class MdsCreateResult:
    invoke_id: int


@dataclass(frozen=True)
class PollRequest:
    invoke_id: int
    poll_number: int
    obj_class: int
    attr_group: int
    extended: bool
    attributes: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    context_id: int
    handle: int
    attributes: dict[int, bytes]


@dataclass(frozen=True)
class PollReply:
    invoke_id: int
    poll_number: int
    rel_time: int
    obj_class: int
    extended: bool
    observations: tuple[Observation, ...]
    linked_state: int | None = None  # None: plain result; else RORLS_FIRST/..._LAST


@dataclass(frozen=True)
class RemoteError:
    invoke_id: int
    error_value: int


Message = (
    AssociationRequest | AssociationResult | ReleaseRequest | ReleaseResponse | Abort | MdsCreateEvent
    | MdsCreateResult | PollRequest | PollReply | RemoteError
)


# --- decoding -----------------------------------------------------------------------------------
def decode_message(data: bytes) -> Message | Rejection:
    """Decode one message (a frame's user data). Never raises."""
    try:
        if not data:
            return Rejection("empty_message", "")
        if data[0] == 0xE1:
            return _decode_data(data)
        return _decode_spdu(data)
    except _Short as exc:
        return Rejection("truncated", f"message ends inside {exc}")
    except _BadLength as exc:
        return Rejection("bad_length", str(exc))
    except Exception as exc:  # a decoder bug must not kill the reader
        return Rejection("decoder_error", repr(exc))


def _decode_spdu(data: bytes) -> Message | Rejection:
    cur = _Cursor(data, "SPDU")
    si = cur.u8("SI")
    li = cur.u8("LI")
    if li == 0xFF:
        li = cur.u16("LI")
    if li != cur.left:
        return Rejection("bad_length", f"SPDU LI {li}, {cur.left} bytes follow")
    body = cur.take(li, "body")
    if si == CN_SPDU_SI:
        return AssociationRequest(body)
    if si == AC_SPDU_SI:
        return AssociationResult(True)
    if si == RF_SPDU_SI:
        return AssociationResult(False)
    if si == FN_SPDU_SI:
        return ReleaseRequest()
    if si == DN_SPDU_SI:
        return ReleaseResponse()
    if si == AB_SPDU_SI:
        return Abort()
    return Rejection("unknown_spdu", f"session SI 0x{si:02X}")


def _attribute_list(cur: _Cursor, name: str) -> dict[int, bytes]:
    count = cur.u16(f"{name}.count")
    body = cur.sub(name)
    attrs: dict[int, bytes] = {}
    for _ in range(count):
        attr_id = body.u16("attribute_id")
        attrs[attr_id] = body.sub(f"AVA 0x{attr_id:04X}").data
    _expect_end(body)
    return attrs


def _decode_data(data: bytes) -> Message | Rejection:
    cur = _Cursor(data, "SPpdu")
    if cur.u16("session_id") != SESSION_ID:
        return Rejection("bad_session_id", f"0x{int.from_bytes(data[:2], 'big'):04X}")
    cur.u16("p_context_id")
    ro_type = cur.u16("ROapdus.ro_type")
    ro = cur.sub("ROapdus")
    _expect_end(cur)
    if ro_type == ROIV_APDU:
        return _decode_roiv(ro)
    if ro_type in (RORS_APDU, ROLRS_APDU):
        linked = None
        if ro_type == ROLRS_APDU:
            linked = ro.u8("RolrsId.state")
            ro.u8("RolrsId.count")
        return _decode_result(ro, linked)
    if ro_type == ROER_APDU:
        invoke = ro.u16("invoke_id")
        error = ro.u16("error_value")
        ro.sub("error")
        _expect_end(ro)
        return RemoteError(invoke, error)
    return Rejection("unknown_ro_type", f"ROapdus.ro_type {ro_type}")


def _managed_object(cur: _Cursor) -> int:
    obj_class = cur.u16("m_obj_class")
    cur.u16("context_id")
    cur.u16("handle")
    return obj_class


def _decode_roiv(ro: _Cursor) -> Message | Rejection:
    invoke = ro.u16("invoke_id")
    command = ro.u16("command_type")
    op = ro.sub("ROIVapdu")
    _expect_end(ro)
    if command in (CMD_EVENT_REPORT, CMD_CONFIRMED_EVENT_REPORT):
        _managed_object(op)
        event_time = op.u32("event_time")
        event_type = op.u16("event_type")
        info = op.sub("EventReportArgument")
        _expect_end(op)
        if event_type != NOM_NOTI_MDS_CREAT:
            return Rejection("unsupported:event_type", f"event 0x{event_type:04X}")
        _managed_object(info)
        attrs = _attribute_list(info, "MDSCreateInfo.attribute_list")
        _expect_end(info)
        return MdsCreateEvent(invoke, event_time, attrs)
    if command == CMD_CONFIRMED_ACTION:
        _managed_object(op)
        op.u32("scope")
        action = op.u16("action_type")
        arg = op.sub("ActionArgument")
        _expect_end(op)
        if action not in (NOM_ACT_POLL_MDIB_DATA, NOM_ACT_POLL_MDIB_DATA_EXT):
            return Rejection("unsupported:action_type", f"action 0x{action:04X}")
        poll_number = arg.u16("poll_number")
        arg.u16("polled_obj_type.partition")
        obj_class = arg.u16("polled_obj_type.code")
        group = arg.u16("polled_attr_grp")
        ext = action == NOM_ACT_POLL_MDIB_DATA_EXT
        attrs = _attribute_list(arg, "poll_ext_attr") if ext else {}
        _expect_end(arg)
        return PollRequest(invoke, poll_number, obj_class, group, ext, attrs)
    return Rejection("unsupported:command", f"ROIV command_type {command}")


def _decode_result(ro: _Cursor, linked: int | None) -> Message | Rejection:
    invoke = ro.u16("invoke_id")
    command = ro.u16("command_type")
    op = ro.sub("RORSapdu")
    _expect_end(ro)
    if command == CMD_CONFIRMED_EVENT_REPORT:
        _managed_object(op)
        op.u32("current_time")
        event_type = op.u16("event_type")
        op.sub("EventReportResult")
        _expect_end(op)
        if event_type != NOM_NOTI_MDS_CREAT:
            return Rejection("unsupported:event_type", f"event result 0x{event_type:04X}")
        return MdsCreateResult(invoke)
    if command == CMD_CONFIRMED_ACTION:
        _managed_object(op)
        action = op.u16("action_type")
        reply = op.sub("ActionResult")
        _expect_end(op)
        if action not in (NOM_ACT_POLL_MDIB_DATA, NOM_ACT_POLL_MDIB_DATA_EXT):
            return Rejection("unsupported:action_type", f"action result 0x{action:04X}")
        ext = action == NOM_ACT_POLL_MDIB_DATA_EXT
        poll_number = reply.u16("poll_number")
        if ext:
            reply.u16("sequence_no")
        rel_time = reply.u32("rel_time_stamp")
        reply.take(8, "abs_time_stamp")
        reply.u16("polled_obj_type.partition")
        obj_class = reply.u16("polled_obj_type.code")
        reply.u16("polled_attr_grp")
        observations = []
        n_contexts = reply.u16("PollInfoList.count")
        contexts = reply.sub("PollInfoList")
        for _ in range(n_contexts):
            context_id = contexts.u16("SingleContextPoll.context_id")
            n_obs = contexts.u16("SingleContextPoll.count")
            polls = contexts.sub("SingleContextPoll")
            for _ in range(n_obs):
                handle = polls.u16("ObservationPoll.obj_handle")
                attrs = _attribute_list(polls, "ObservationPoll.attributes")
                observations.append(Observation(context_id, handle, attrs))
            _expect_end(polls)
        _expect_end(contexts)
        _expect_end(reply)
        return PollReply(invoke, poll_number, rel_time, obj_class, ext, tuple(observations), linked)
    return Rejection("unsupported:command", f"RORS command_type {command}")


# --- attribute values ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NumericObs:
    physio_id: int
    state: int
    unit_code: int
    value: float | None
    special: str | None


def decode_nu_obs(value: bytes) -> NumericObs:
    if len(value) != 10:
        raise _BadLength(f"NuObsValue of {len(value)} bytes, expected 10")
    physio, state, unit, word = struct.unpack(">HHHI", value)
    number, special = decode_float(word)
    return NumericObs(physio, state, unit, number, special)


def numerics(reply: PollReply) -> list[NumericObs] | Rejection:
    """All NuObsValues in a poll reply (a Rejection if any is malformed)."""
    out = []
    try:
        for obs in reply.observations:
            if NOM_ATTR_NU_VAL_OBS in obs.attributes:
                out.append(decode_nu_obs(obs.attributes[NOM_ATTR_NU_VAL_OBS]))
    except _BadLength as exc:
        return Rejection("bad_length", str(exc))
    return out


@dataclass
class _WaveSpec:
    label: int | None = None
    period_ticks: int | None = None
    sample_size: int = 16
    significant_bits: int = 16
    scale: tuple[float, float, int, int] | None = None  # lower_abs, upper_abs, lower_scaled, upper_scaled


@dataclass(frozen=True)
class WaveObs:
    handle: int
    label: str
    label_id: int | None
    fs_hz: float | None
    state: int
    samples: np.ndarray  # physical units where a scale is known, else raw counts


class WaveCache:
    """Per-handle wave metadata (label, sample period, sample spec, scale) kept across replies."""

    def __init__(self) -> None:
        self.specs: dict[tuple[int, int], _WaveSpec] = {}

    def waves(self, reply: PollReply) -> list[WaveObs] | Rejection:
        out = []
        try:
            for obs in reply.observations:
                spec = self.specs.setdefault((obs.context_id, obs.handle), _WaveSpec())
                self._update(spec, obs.attributes)
                if NOM_ATTR_SA_VAL_OBS in obs.attributes:
                    out.append(self._samples(obs.handle, spec, obs.attributes[NOM_ATTR_SA_VAL_OBS]))
        except _Short as exc:
            return Rejection("truncated", f"attribute ends inside {exc}")
        except _BadLength as exc:
            return Rejection("bad_length", str(exc))
        return out

    @staticmethod
    def _update(spec: _WaveSpec, attrs: dict[int, bytes]) -> None:
        if NOM_ATTR_ID_LABEL in attrs:
            spec.label = _Cursor(attrs[NOM_ATTR_ID_LABEL], "TextId").u32("label")
        if NOM_ATTR_TIME_PD_SAMP in attrs:
            spec.period_ticks = _Cursor(attrs[NOM_ATTR_TIME_PD_SAMP], "TIME_PD_SAMP").u32("period")
        if NOM_ATTR_SA_SPECN in attrs:
            cur = _Cursor(attrs[NOM_ATTR_SA_SPECN], "SaSpec")
            cur.u16("array_size")
            size, bits = cur.u8("sample_size"), cur.u8("significant_bits")
            cur.u16("flags")
            if size not in (8, 16) or not 1 <= bits <= size:
                raise _BadLength(f"SaSpec sample_size {size} significant_bits {bits}")
            spec.sample_size, spec.significant_bits = size, bits
        if NOM_ATTR_SCALE_SPECN_I16 in attrs:
            cur = _Cursor(attrs[NOM_ATTR_SCALE_SPECN_I16], "ScaleRangeSpec16")
            lo, _ = decode_float(cur.u32("lower_absolute_value"))
            hi, _ = decode_float(cur.u32("upper_absolute_value"))
            lo_s, hi_s = cur.u16("lower_scaled_value"), cur.u16("upper_scaled_value")
            if lo is not None and hi is not None and hi_s != lo_s:
                spec.scale = (lo, hi, lo_s, hi_s)

    @staticmethod
    def _samples(handle: int, spec: _WaveSpec, value: bytes) -> WaveObs:
        cur = _Cursor(value, "SaObsValue")
        cur.u16("physio_id")
        state = cur.u16("state")
        raw = cur.sub("array").data
        _expect_end(cur)
        dtype = ">u2" if spec.sample_size == 16 else "u1"
        if len(raw) % (spec.sample_size // 8):
            raise _BadLength(f"sample array of {len(raw)} bytes for {spec.sample_size}-bit samples")
        counts = np.frombuffer(raw, dtype=dtype).astype(np.int64) & ((1 << spec.significant_bits) - 1)
        if spec.scale is not None:
            lo, hi, lo_s, hi_s = spec.scale
            samples = lo + (counts - lo_s) * ((hi - lo) / (hi_s - lo_s))
        else:
            samples = counts.astype(np.float64)
        fs = RELATIVE_TIME_HZ / spec.period_ticks if spec.period_ticks else None
        label = WAVE_LABELS.get(spec.label, f"0x{spec.label:08X}" if spec.label is not None else "unknown")
        return WaveObs(handle, label, spec.label, fs, state, samples)


# --- encoding -----------------------------------------------------------------------------------
def _u16(v: int) -> bytes:
    return v.to_bytes(2, "big")


def _u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def _spdu(si: int, body: bytes) -> bytes:
    li = bytes((len(body),)) if len(body) < 0xFF else b"\xff" + _u16(len(body))
    return bytes((si,)) + li + body


# Session data and ISO presentation/ACSE headers of the association messages (fixed BER, indefinite
# lengths closed by the zero trailer). As in the Data Export Interface Programming Guide.
_SESSION_DATA = bytes.fromhex("05081301001601028000140200 02".replace(" ", ""))
_AARQ_PRESENTATION = bytes.fromhex(
    "3180a080800101 0000a280a003000001a480308002010106045201000130800602510100000000"
    "3080020102060c2a8648ce1402010000000101 3080060c2a8648ce140201000000020100000000 0000"
    "6180308002010 1a0806080a180060c2a8648ce14020100000003010000be802880060c2a8648ce1402"
    "01000000010102010281".replace(" ", "")
)
_AARE_PRESENTATION = bytes.fromhex(
    "3180a080800101 0000a280a003000001a5803080800100 3080020101060251010000000000"
    "6180308002010 1a0806180a180060c2a8648ce14020100000003010000a203020100a305a1030201 00"
    "be802880020102 8181".replace(" ", "")
)
_PRESENTATION_TRAILER = bytes(16)
SYST_CLIENT = 0x80000000
SYST_SERVER = 0x00800000
MDDL_VERSION1 = 0x80000000
NOMEN_VERSION = 0x40000000
COLD_START = 0x20000000
POLL_PROFILE_REV_0 = 0x80000000
P_OPT_DYN_CREATE_OBJECTS = 0x40000000
P_OPT_DYN_DELETE_OBJECTS = 0x20000000
POLL_EXT_PERIOD_NU_1SEC = 0x80000000
POLL_EXT_PERIOD_RTSA = 0x08000000
POLL_EXT_ENUM = 0x04000000


def _user_info(system_type: int, min_poll_ticks: int, mtu_rx: int, mtu_tx: int, ext_options: int) -> bytes:
    """MDSEUserInfoStd with one PollProfileSupport (and its PollProfileExt) application profile."""
    ext = _u32(ext_options) + _u16(0) + _u16(0)  # options, empty ext_attr list
    optional = _u16(1) + _u16(4 + len(ext)) + _u16(NOM_ATTR_POLL_PROFILE_EXT) + _u16(len(ext)) + ext
    profile = (
        _u32(POLL_PROFILE_REV_0) + _u32(min_poll_ticks) + _u32(mtu_rx) + _u32(mtu_tx)
        + _u32(0xFFFFFFFF) + _u32(P_OPT_DYN_CREATE_OBJECTS | P_OPT_DYN_DELETE_OBJECTS) + optional
    )
    aprofiles = _u16(1) + _u16(4 + len(profile)) + _u16(NOM_POLL_PROFILE_SUPPORT) + _u16(len(profile)) + profile
    return (
        _u32(MDDL_VERSION1) + _u32(NOMEN_VERSION) + _u32(0) + _u32(system_type) + _u32(COLD_START)
        + _u16(0) + _u16(0) + aprofiles
    )


def _association(si: int, presentation: bytes, user_info: bytes) -> bytes:
    pres = presentation + bytes((len(user_info),)) + user_info + _PRESENTATION_TRAILER
    pres_li = bytes((len(pres),)) if len(pres) < 0xFF else b"\xff" + _u16(len(pres))
    return _spdu(si, _SESSION_DATA + b"\xc1" + pres_li + pres)


def encode_association_request() -> bytes:
    """AARQ asking for 1 s numeric and real-time sample-array extended polling."""
    info = _user_info(SYST_CLIENT, 1000, 2500, 1000, POLL_EXT_PERIOD_NU_1SEC | POLL_EXT_PERIOD_RTSA | POLL_EXT_ENUM)
    return _association(CN_SPDU_SI, _AARQ_PRESENTATION, info)


def encode_association_result(accepted: bool = True) -> bytes:
    if not accepted:
        return _spdu(RF_SPDU_SI, _SESSION_DATA)
    info = _user_info(SYST_SERVER, 1000, 1000, 1364, POLL_EXT_PERIOD_NU_1SEC | POLL_EXT_PERIOD_RTSA)
    return _association(AC_SPDU_SI, _AARE_PRESENTATION, info)


_RELEASE_BODY = bytes.fromhex("c11661803080020101a080")


def encode_release_request() -> bytes:
    return _spdu(FN_SPDU_SI, _RELEASE_BODY + bytes.fromhex("628080010000000000000000000000"))


def encode_release_response() -> bytes:
    return _spdu(DN_SPDU_SI, _RELEASE_BODY + bytes.fromhex("638080010000000000000000000000"))


def _data(ro_type: int, apdu: bytes) -> bytes:
    return _u16(SESSION_ID) + _u16(P_CONTEXT_ID) + _u16(ro_type) + _u16(len(apdu)) + apdu


def _mds_object() -> bytes:
    return _u16(NOM_MOC_VMS_MDS) + _u16(0) + _u16(0)


def _attr_list(attrs: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(_u16(a) + _u16(len(v)) + v for a, v in attrs)
    return _u16(len(attrs)) + _u16(len(body)) + body


def bcd_time(when: _dt.datetime) -> bytes:
    """AbsoluteTime: century, year, month, day, hour, minute, second, 1/100 s, each one BCD byte."""
    def bcd(n: int) -> int:
        return (n // 10) << 4 | n % 10

    return bytes(
        bcd(x)
        for x in (when.year // 100, when.year % 100, when.month, when.day, when.hour, when.minute,
                  when.second, when.microsecond // 10000)
    )


def encode_mds_create_event(invoke_id: int, rel_time: int, when: _dt.datetime | None = None) -> bytes:
    when = when or _dt.datetime.now(_dt.timezone.utc)
    info = _mds_object() + _attr_list([(NOM_ATTR_TIME_ABS, bcd_time(when)), (NOM_ATTR_TIME_REL, _u32(rel_time))])
    arg = _mds_object() + _u32(rel_time) + _u16(NOM_NOTI_MDS_CREAT) + _u16(len(info)) + info
    return _data(ROIV_APDU, _u16(invoke_id) + _u16(CMD_CONFIRMED_EVENT_REPORT) + _u16(len(arg)) + arg)


def encode_mds_create_result(invoke_id: int, rel_time: int = 0) -> bytes:
    result = _mds_object() + _u32(rel_time) + _u16(NOM_NOTI_MDS_CREAT) + _u16(0)
    return _data(RORS_APDU, _u16(invoke_id) + _u16(CMD_CONFIRMED_EVENT_REPORT) + _u16(len(result)) + result)


def encode_poll_request(
    invoke_id: int, poll_number: int, obj_class: int, extended: bool = True, period_ticks: int | None = None
) -> bytes:
    """A poll for all objects of one class (6 numerics, 9 real-time waves), attribute group 0 (all)."""
    req = _u16(poll_number) + _u16(NOM_PART_OBJ) + _u16(obj_class) + _u16(0)
    if extended:
        req += _attr_list([] if period_ticks is None else [(NOM_ATTR_TIME_PD_POLL, _u32(period_ticks))])
    action = NOM_ACT_POLL_MDIB_DATA_EXT if extended else NOM_ACT_POLL_MDIB_DATA
    arg = _mds_object() + _u32(0) + _u16(action) + _u16(len(req)) + req
    return _data(ROIV_APDU, _u16(invoke_id) + _u16(CMD_CONFIRMED_ACTION) + _u16(len(arg)) + arg)


def encode_poll_reply(
    invoke_id: int,
    poll_number: int,
    rel_time: int,
    obj_class: int,
    observations: list[tuple[int, list[tuple[int, bytes]]]],
    extended: bool = True,
    context_id: int = 0,
    sequence_no: int = 0,
    when: _dt.datetime | None = None,
    linked_state: int | None = None,
) -> bytes:
    """A poll result carrying one SingleContextPoll with the given (handle, attributes) observations."""
    when = when or _dt.datetime.now(_dt.timezone.utc)
    polls = b"".join(_u16(h) + _attr_list(attrs) for h, attrs in observations)
    context = _u16(context_id) + _u16(len(observations)) + _u16(len(polls)) + polls
    info = _u16(1) + _u16(len(context)) + context
    reply = _u16(poll_number) + (_u16(sequence_no) if extended else b"") + _u32(rel_time) + bcd_time(when)
    reply += _u16(NOM_PART_OBJ) + _u16(obj_class) + _u16(0) + info
    action = NOM_ACT_POLL_MDIB_DATA_EXT if extended else NOM_ACT_POLL_MDIB_DATA
    result = _mds_object() + _u16(action) + _u16(len(reply)) + reply
    rors = _u16(invoke_id) + _u16(CMD_CONFIRMED_ACTION) + _u16(len(result)) + result
    if linked_state is None:
        return _data(RORS_APDU, rors)
    return _data(ROLRS_APDU, bytes((linked_state, 1)) + rors)


def nu_obs_attr(physio_id: int, value: float | None, unit: int, state: int = 0, decimals: int = 2) -> tuple[int, bytes]:
    """NOM_ATTR_NU_VAL_OBS for one numeric; None -> NaN with state 'invalid'."""
    if value is None:
        state |= 0x8000
    return NOM_ATTR_NU_VAL_OBS, struct.pack(">HHHI", physio_id, state, unit, encode_float(value, decimals))


def wave_attrs(
    label: int,
    physio_id: int,
    counts: np.ndarray,
    fs_hz: float,
    scale: tuple[float, float, int, int],
    significant_bits: int = 14,
    state: int = 0,
) -> list[tuple[int, bytes]]:
    """Attributes of one real-time sample array observation (16-bit samples)."""
    lo, hi, lo_s, hi_s = scale
    counts = np.asarray(counts, dtype=">u2")
    ticks = round(RELATIVE_TIME_HZ / fs_hz)
    return [
        (NOM_ATTR_ID_LABEL, _u32(label)),
        (NOM_ATTR_TIME_PD_SAMP, _u32(ticks)),
        (NOM_ATTR_SA_SPECN, _u16(len(counts)) + bytes((16, significant_bits)) + _u16(0)),
        (NOM_ATTR_SCALE_SPECN_I16, _u32(encode_float(lo, 3)) + _u32(encode_float(hi, 3)) + _u16(lo_s) + _u16(hi_s)),
        (NOM_ATTR_SA_VAL_OBS, _u16(physio_id) + _u16(state) + _u16(counts.nbytes) + counts.tobytes()),
    ]
