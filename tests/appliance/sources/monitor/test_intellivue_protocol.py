"""IntelliVue messages: FLOAT-Type, message layouts, the client dialog, and fuzzing of the decoder."""

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sources.monitor import intellivue_protocol as p
from appliance.sources.monitor.intellivue import IntelliVueClient
from appliance.sources.monitor.intellivue_framing import Deframer, encode_frame
from appliance.sources.monitor.types import Rejection, VitalSample, WaveChunk
from tests.appliance.sources.monitor.intellivue_messages import VALID_MESSAGES, numeric_reply


def test_float_type_known_words():
    assert p.decode_float(0xFF0003D1) == (97.7, None)  # exponent -1, mantissa 977
    assert p.decode_float(0x00000061) == (97.0, None)
    assert p.decode_float(0x00FFFFFF) == (-1.0, None)  # 24-bit two's complement mantissa
    assert p.decode_float(0x02000003) == (300.0, None)
    assert p.decode_float(0x007FFFFF) == (None, "nan")
    assert p.decode_float(0x00800000) == (None, "nres")
    assert p.decode_float(0x007FFFFE) == (None, "+inf")
    assert p.decode_float(0x00800002) == (None, "-inf")


@settings(max_examples=500, deadline=None, database=None)
@given(st.floats(-80000, 80000, allow_nan=False).map(lambda x: round(x, 2)))
def test_float_round_trip(x):
    value, special = p.decode_float(p.encode_float(x, 2))
    assert special is None and value == pytest.approx(x, abs=1e-9)


def test_poll_request_layout():
    msg = p.encode_poll_request(7, 3, p.NOM_MOC_VMO_METRIC_NU, extended=True)
    # SPpdu, ROapdus (ROIV), ROIVapdu (confirmed action), ActionArgument, PollMdibDataReqExt
    sid, ctx, ro_type, ro_len, invoke, cmd, cmd_len = struct.unpack(">7H", msg[:14])
    assert (sid, ctx, ro_type, invoke, cmd) == (0xE100, 2, 1, 7, 7)
    assert ro_len == len(msg) - 8 and cmd_len == len(msg) - 14
    obj_class, _, _, scope, action, arg_len = struct.unpack(">3HIHH", msg[14:28])
    assert (obj_class, scope, action, arg_len) == (33, 0, 0xF13B, len(msg) - 28)
    assert struct.unpack(">5H", msg[28:38]) == (3, 1, 6, 0, 0)  # poll no, partition, class, group, empty attrs
    assert p.decode_message(msg) == p.PollRequest(7, 3, 6, 0, True, {})
    assert p.decode_message(p.encode_poll_request(1, 2, 9, extended=False)) == p.PollRequest(1, 2, 9, 0, False, {})


def test_mds_create_dialog_messages():
    ev = p.decode_message(p.encode_mds_create_event(42, 8000))
    assert isinstance(ev, p.MdsCreateEvent) and ev.invoke_id == 42 and ev.event_time == 8000
    res = p.encode_mds_create_result(42, 8000)
    assert res[:8] == bytes.fromhex("e100000200020014")  # RORS, 20 bytes as VSCaptureMP sends it
    assert res[-4:] == bytes.fromhex("0d060000")
    assert p.decode_message(res) == p.MdsCreateResult(42)


def test_association_messages():
    aarq = p.encode_association_request()
    assert aarq[0] == 0x0D and aarq[1] == len(aarq) - 2
    assert isinstance(p.decode_message(aarq), p.AssociationRequest)
    assert p.decode_message(p.encode_association_result(True)) == p.AssociationResult(True)
    assert p.decode_message(p.encode_association_result(False)) == p.AssociationResult(False)
    assert p.decode_message(aarq[:-1]).reason == "bad_length"


def test_poll_reply_numerics_and_states():
    reply = p.decode_message(numeric_reply([(p.NOM_ECG_CARD_BEAT_RATE, 142.5, 0), (p.NOM_PULS_OXIM_SAT_O2, 93, 0x4000),
                                            (p.NOM_PLETH_PULS_RATE, None, 0)]))
    assert isinstance(reply, p.PollReply) and reply.rel_time == 1234 and reply.poll_number == 9
    nums = {n.physio_id: n for n in p.numerics(reply)}
    assert nums[p.NOM_ECG_CARD_BEAT_RATE].value == 142.5
    assert nums[p.NOM_PULS_OXIM_SAT_O2].state == 0x4000
    assert nums[p.NOM_PLETH_PULS_RATE].special == "nan" and nums[p.NOM_PLETH_PULS_RATE].state & 0x8000
    linked = p.decode_message(numeric_reply([(p.NOM_ECG_CARD_BEAT_RATE, 150, 0)], linked=p.RORLS_FIRST))
    assert linked.linked_state == p.RORLS_FIRST and p.numerics(linked)[0].value == 150


def test_wave_reply_scaling():
    counts = np.array([8192, 8392, 7992, 0, 16383], dtype=np.uint16)
    attrs = p.wave_attrs(p.NLS_NOM_ECG_ELEC_POTL_II, p.NOM_ECG_ELEC_POTL_II, counts, 500.0, (-40.96, 40.955, 0, 16383))
    reply = p.decode_message(p.encode_poll_reply(1, 1, 0, p.NOM_MOC_VMO_METRIC_SA_RT, [(0x101, attrs)]))
    (wave,) = p.WaveCache().waves(reply)
    assert wave.label == "ECG_II" and wave.fs_hz == 500.0
    step = 81.915 / 16383
    expected = -40.96 + counts.astype(float) * step
    assert np.allclose(wave.samples, expected)


def _serve(client_bytes: list[bytes], monitor: Deframer) -> list:
    msgs = []
    for frame in client_bytes:
        for item in monitor.feed(frame):
            msgs.append(p.decode_message(item))
    return msgs


def test_client_dialog_end_to_end_without_io():
    client = IntelliVueClient(numeric_period_ns=1000, wave_period_ns=1000)
    monitor = Deframer()
    (aarq,) = _serve(client.start(), monitor)
    assert isinstance(aarq, p.AssociationRequest) and client.state == "associating"
    assert client.due_polls(0) == []  # no polling before association
    step = client.feed(encode_frame(p.encode_association_result()) + encode_frame(p.encode_mds_create_event(77, 0)), 1)
    (result,) = _serve(step.send, monitor)
    assert result == p.MdsCreateResult(77) and client.ready
    polls = _serve(client.due_polls(10), monitor)
    assert [m.obj_class for m in polls] == [6, 9]
    reply = numeric_reply([(p.NOM_ECG_CARD_BEAT_RATE, 150, 0), (p.NOM_PULS_OXIM_SAT_O2, 500, 0),
                           (p.NOM_PLETH_PULS_RATE, 149, 0x8000)])
    step = client.feed(encode_frame(reply), 99)
    (sample,) = step.out
    assert isinstance(sample, VitalSample) and sample.t_mono_ns == 99
    assert sample.hr == 150 and sample.spo2 is None and sample.pulse_rate is None
    assert {"SPO2:implausible", "PR:invalid"} <= sample.flags
    assert [r.reason for r in step.rejects] == ["implausible:SPO2"]
    counts = np.full(10, 8192, dtype=np.uint16)
    attrs = p.wave_attrs(p.NLS_NOM_ECG_ELEC_POTL_II, p.NOM_ECG_ELEC_POTL_II, counts, 250.0, (-40.96, 40.955, 0, 16383))
    step = client.feed(encode_frame(p.encode_poll_reply(3, 2, 0, 9, [(1, attrs)])), 100)
    (chunk,) = step.out
    assert isinstance(chunk, WaveChunk) and chunk.fs_hz == 250 and len(chunk.samples) == 10
    step = client.feed(encode_frame(p.encode_release_request()), 101)
    assert client.state == "idle" and isinstance(_serve(step.send, monitor)[0], p.ReleaseResponse)


@pytest.mark.slow  # ~5-10 s idle: 10,000 hypothesis examples
@settings(max_examples=10_000, deadline=None, database=None)
@given(st.sampled_from(VALID_MESSAGES), st.binary(max_size=15))
def test_fuzz_decoder_and_client(mutate, message, program):
    data = mutate(message, program)
    msg = p.decode_message(data)
    if isinstance(msg, Rejection):
        assert msg.reason and msg.reason != "decoder_error", msg
    if data == message:
        assert not isinstance(msg, Rejection)
    if isinstance(msg, p.PollReply):
        for result in (p.numerics(msg), p.WaveCache().waves(msg)):
            assert isinstance(result, (list, Rejection))
    # the client must digest the same bytes framed, in any state, without raising
    client = IntelliVueClient()
    client.start()
    client.feed(encode_frame(p.encode_association_result()) + encode_frame(p.encode_mds_create_event(1, 0)), 0)
    step = client.feed(encode_frame(data), 1)
    assert all(r.reason for r in step.rejects)
