"""HL7 v2 ORU^R01 (IHE PCD-01): segment content, escaping, MLLP framing, and a real TCP exchange."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.station import hl7


def by_segment(message: str) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for fields in hl7.parse_segments(message):
        out.setdefault(fields[0], []).append(fields)
    return out


def test_oru_r01_segments(make_score: Any) -> None:
    s = make_score(nips=3.5, items={"cry": 2, "facial_expression": 1})
    now = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    msg = hl7.build_oru_r01(s, site="nicu", bed="12", patient_id="P123", receiving_application="CIS", now=now)
    assert msg.startswith("MSH|^~\\&|") and msg.endswith("\r") and "\n" not in msg
    seg = by_segment(msg)
    assert list(seg) == ["MSH", "PID", "PV1", "OBR", "OBX"]
    msh = seg["MSH"][0]
    assert msh[2] == "NEOPAIN^dev-1" and msh[3] == "nicu" and msh[4] == "CIS"
    assert msh[6] == "20250102030405.678+0000"
    assert msh[8] == "ORU^R01^ORU_R01" and msh[9] == s["message_id"] and msh[11] == "2.6"
    assert msh[14:16] == ["AL", "NE"] and msh[20].startswith("IHE_PCD_001^")
    assert seg["PID"][0][3] == "P123^^^HOSP^MR"
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
    msg = hl7.build_oru_r01(make_score(device_id=nasty), site=nasty, bed=nasty, patient_id=nasty)
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
