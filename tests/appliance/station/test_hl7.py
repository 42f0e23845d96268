"""HL7 v2 ORU^R01 (IHE PCD-01): segment content, escaping, MLLP framing, and a real TCP exchange."""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.station import hl7
from appliance.station.patients import Patient

BABY = Patient(mrn="P123", authority="HOSP", family="DOE", given="Baby Girl")


def by_segment(message: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for fields in hl7.parse_segments(message):
        out.setdefault(fields[0], []).append(fields)
    return out


def test_oru_r01_segments(make_score: Any) -> None:
    s = make_score(nips=3.5, items={"cry": 2, "facial_expression": 1})
    now = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    msg = hl7.build_oru_r01(s, site="nicu", bed="12", patient=BABY, receiving_application="CIS", now=now)
    assert msg.startswith("MSH|^~\\&|") and msg.endswith("\r") and "\n" not in msg
    seg = by_segment(msg)
    assert list(seg) == ["MSH", "PID", "PV1", "OBR", "OBX"]
    msh = seg["MSH"][0]
    assert msh[2] == "NEOPAIN^dev-1" and msh[3] == "nicu" and msh[4] == "CIS"
    assert msh[6] == "20250102030405.678+0000"
    assert msh[8] == "ORU^R01^ORU_R01" and msh[9] == s["message_id"] and msh[11] == "2.6"
    assert msh[14:16] == ["AL", "NE"] and msh[20].startswith("IHE_PCD_001^")
    assert seg["PID"][0][3] == "P123^^^HOSP^MR" and seg["PID"][0][5] == "DOE^Baby Girl^^^^^L"
    assert seg["PV1"][0][3] == "nicu^^12"
    obr = seg["OBR"][0]
    assert obr[3] == f"{s['message_id']}^NEOPAIN"
    assert obr[7] == hl7.hl7_timestamp(s["window"]["start_utc"]) and obr[8] == hl7.hl7_timestamp(s["window"]["end_utc"])
    obx = seg["OBX"]
    assert [o[1] for o in obx] == ["1", "2", "3", "4"]
    assert [o[3].split("^")[0] for o in obx] == ["NIPS-TOTAL", "PAIN-INTENSITY", "NIPS-FACIAL-EXPRESSION", "NIPS-CRY"]
    assert all(o[3].endswith("^99NPN") and o[2] == "NM" and o[11] == "F" for o in obx)
    assert all(o[6] == "262656^MDC_DIM_DIMLESS^MDC" for o in obx)
    assert [o[4] for o in obx] == ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4"]
    assert float(obx[0][5]) == s["nips"] and float(obx[1][5]) == pytest.approx(s["intensity"])
    assert obx[0][7] == "0-7" and obx[1][7] == "0-10" and obx[3][7] == "0-2"
    assert obx[0][14] == obr[8] and obx[0][18] == "dev-1^NEOPAIN"


def test_no_patient_no_bed(make_score: Any) -> None:
    seg = by_segment(hl7.build_oru_r01(make_score()))
    assert seg["PID"][0][3] == "" and "PV1" not in seg


def test_special_characters_cannot_break_the_structure(make_score: Any) -> None:
    nasty = "a|b^c~d&e\\f\rg"
    msg = hl7.build_oru_r01(make_score(device_id=nasty), site=nasty, bed=nasty,
                            patient=Patient(mrn=nasty, authority=nasty, family=nasty, given=nasty))
    seg = by_segment(msg)
    assert list(seg) == ["MSH", "PID", "PV1", "OBR", "OBX"]
    msh = seg["MSH"][0]
    assert hl7.unescape(msh[3]) == nasty and msh[2] == "NEOPAIN^" + hl7.escape(nasty)
    assert hl7.unescape(seg["PV1"][0][3].split("^")[2]) == nasty


@given(st.text())
def test_escape_roundtrip(text: str) -> None:
    esc = hl7.escape(text)
    assert not any(c in esc for c in "|^~&\r\n")
    assert hl7.unescape(esc) == text


def test_unescape_refuses_broken_sequences() -> None:
    with pytest.raises(ValueError, match="no closing"):
        hl7.unescape("abc\\F")
    with pytest.raises(ValueError, match="unknown sequence"):
        hl7.unescape("\\Q\\")


def test_timestamps() -> None:
    assert hl7.hl7_timestamp("2025-06-01T10:00:00.5+02:00") == "20250601080000.500+0000"
    with pytest.raises(ValueError, match="time zone"):
        hl7.hl7_timestamp("2025-06-01T10:00:00")
    with pytest.raises(ValueError, match="ISO 8601"):
        hl7.hl7_timestamp("noon")


@pytest.mark.parametrize("mutate,field", [
    (lambda s: s.update(nips=-1), "score.nips"),
    (lambda s: s.pop("window"), "score.window.start_utc"),
    (lambda s: s.update(device_id=""), "score.device_id"),
    (lambda s: s["nips_items"].update(arms=2), "score.nips_items.arms"),
])
def test_bad_score_names_field(make_score: Any, mutate: Any, field: str) -> None:
    s = make_score(items={"arms": 1})
    mutate(s)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        hl7.build_oru_r01(s)


def test_mllp_frame_and_incremental_decoder() -> None:
    framed = hl7.mllp_frame("MSH|a\rOBX|é\r")
    assert framed[:1] == b"\x0b" and framed[-2:] == b"\x1c\x0d"
    dec = hl7.MllpDecoder()
    stream = b"noise" + framed + hl7.mllp_frame("second\r")
    got: list[str] = []
    for i in range(len(stream)):  # byte by byte: messages split across TCP reads
        got += dec.feed(stream[i:i + 1])
    assert got == ["MSH|a\rOBX|é\r", "second\r"]
    with pytest.raises(ValueError, match="framing byte"):
        hl7.mllp_frame("bad\x1c")
    small = hl7.MllpDecoder(max_message_bytes=10)
    with pytest.raises(ValueError, match="longer than 10"):
        small.feed(b"\x0b" + b"x" * 20)


def test_ack_parse_and_build(make_score: Any) -> None:
    msg = hl7.build_oru_r01(make_score())
    ack = hl7.parse_ack(hl7.build_ack(msg, "AE", "bad | value"))
    assert (ack.code, ack.control_id, ack.text, ack.accepted) == ("AE", hl7.parse_segments(msg)[0][9],
                                                                  "bad | value", False)
    with pytest.raises(ValueError, match="MSA"):
        hl7.parse_ack("MSH|^~\\&|x\r")


def test_client_sends_over_tcp_and_checks_ack(mllp_server: Any, make_score: Any) -> None:
    client = hl7.MllpClient("127.0.0.1", mllp_server.port, timeout_s=5)
    msgs = [hl7.build_oru_r01(make_score(nips=n)) for n in (1, 2, 3)]
    for m in msgs:
        assert client.send(m).accepted
    assert mllp_server.messages() == msgs
    mllp_server.nak_codes.append("AR")
    with pytest.raises(hl7.MllpError, match="AR") as exc:
        client.send(msgs[0])
    assert not exc.value.retry
    client.close()


def test_client_reconnects_after_a_dropped_connection(mllp_server: Any, make_score: Any) -> None:
    client = hl7.MllpClient("127.0.0.1", mllp_server.port, timeout_s=5)
    mllp_server.drop_first = 1
    m = hl7.build_oru_r01(make_score())
    with pytest.raises(hl7.MllpError) as exc:
        client.send(m)
    assert exc.value.retry
    assert client.send(m).accepted  # a fresh connection
    assert mllp_server.messages() == [m]
    client.close()


def test_refused_connection_is_retryable(unused_port: int, make_score: Any) -> None:
    client = hl7.MllpClient("127.0.0.1", unused_port, timeout_s=2)
    with pytest.raises(hl7.MllpError, match=str(unused_port)) as exc:
        client.send(hl7.build_oru_r01(make_score()))
    assert exc.value.retry


@pytest.mark.parametrize("text,expected", [("h:1", ("h", 1)), ("[::1]:2575", ("::1", 2575))])
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert hl7.parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["h", ":1", "h:0", "h:x"])
def test_parse_host_port_errors(text: str) -> None:
    with pytest.raises(ValueError, match="--mllp"):
        hl7.parse_host_port(text)


# ------------------------------------------------------------------------------------------ hl7apy validation
def strict(message: str) -> None:
    """hl7apy's HL7 2.6 structures, STRICT: raises naming what is missing or wrong."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    parse_message(message, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()


def test_oru_for_an_assigned_bed_validates_strict_with_pid_3_and_5(make_score: Any) -> None:
    from hl7apy.parser import parse_message

    baby = Patient(mrn="MRN-0042", authority="HOSP", family="O'Neil-Smith", given="Baby Boy",
                   birth_date=date(2026, 11, 20), sex="M", authority_id="1.2.276.0.76.3.1.99", authority_id_type="ISO")
    msg = hl7.build_oru_r01(make_score(items={"cry": 2, "arms": 1}), site="nicu", bed="3", patient=baby)
    strict(msg)
    pid = parse_message(msg, find_groups=False).pid
    assert pid.pid_3.cx_1.to_er7() == "MRN-0042" and pid.pid_3.cx_5.to_er7() == "MR"
    assert pid.pid_3.cx_4.to_er7() == "HOSP&1.2.276.0.76.3.1.99&ISO"
    assert pid.pid_5.xpn_1.to_er7() == "O'Neil-Smith" and pid.pid_5.xpn_2.to_er7() == "Baby Boy"
    assert pid.pid_7.to_er7() == "20261120" and pid.pid_8.to_er7() == "M"


def test_location_only_oru_is_what_strict_refuses(make_score: Any) -> None:
    """Without a patient PID-3/5 stay empty (nobody's record gets a guessed patient's score): the very fields
    hl7apy requires, which is why the bridge never sends it for a bed it knows the patient of."""
    from hl7apy.exceptions import ValidationError

    with pytest.raises(ValidationError, match="PID_3|PID_5"):
        strict(hl7.build_oru_r01(make_score(), site="nicu", bed="3"))


def test_error_ack_names_segment_and_field(make_score: Any) -> None:
    msg = hl7.build_oru_r01(make_score(), site="nicu", bed="3", patient=BABY)
    ack = hl7.build_ack(msg, "AE", "PID-3.4: empty", location=hl7.ErrorLocation("PID", 3, 4),
                        error_code=hl7.ERR_REQUIRED_FIELD_MISSING)
    strict(ack)  # a receiver's own validator accepts what we answer
    err = by_segment(ack)["ERR"][0]
    assert err[2] == "PID^1^3^1^4" and err[3].startswith("101^") and err[4] == "E"
    assert by_segment(ack)["MSH"][0][8] == "ACK^R01^ACK"


@pytest.mark.parametrize("text,expected", [
    ("20261129101500+0100", datetime(2026, 11, 29, 9, 15, tzinfo=timezone.utc)),
    ("20261129101500.25-0030", datetime(2026, 11, 29, 10, 45, 0, 250000, tzinfo=timezone.utc)),
    ("202611291015+0000", datetime(2026, 11, 29, 10, 15, tzinfo=timezone.utc)),
    ("20261129^S", None),  # a TS with precision: the time is its first component; needs a zone
])
def test_parse_hl7_timestamp(text: str, expected: datetime | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="EVN-2.*no UTC offset"):
            hl7.parse_hl7_timestamp(text, "EVN-2")
        midnight = datetime(2026, 11, 29, tzinfo=timezone.utc)
        assert hl7.parse_hl7_timestamp(text, "EVN-2", local_tz=timezone.utc) == midnight
    else:
        assert hl7.parse_hl7_timestamp(text, "EVN-2") == expected


@pytest.mark.parametrize("text", ["2026112", "20261332", "20261129+01", "2026112910.5+0000", "x"])
def test_parse_hl7_timestamp_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="PV1-44"):
        hl7.parse_hl7_timestamp(text, "PV1-44", local_tz=timezone.utc)
