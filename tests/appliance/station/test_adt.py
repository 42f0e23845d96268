"""HL7 ADT over a real MLLP socket into the patient registry, and the bridge filling PID-3/PID-5 and the FHIR
subject from it: real mosquitto, real device publishers, the real ADT listener, a local MLLP receiver."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from appliance.station import fhir, hl7
from appliance.station.adt import AdtListener, handle_message
from appliance.station.bridge import Bridge, BridgeService
from appliance.station.connection import BrokerOptions
from appliance.station.patients import PatientRegistry

PID = "PID|1||{mrn}^^^HOSP&2.16.840.1.113883.3.999&ISO^MR~77^^^OTHER^PI||DOE^BABY GIRL^^^^^L||20261120|F"


def adt(event: str, control: str, *, at: datetime, pv1: str = "PV1|1|I|nicu^^3", mrn: str = "1001",
        pid: str | None = None) -> str:
    """An ADT message as a hospital's ADT system sends it (HL7 2.5, EVN-2 recorded and EVN-6 occurred)."""
    t = hl7.hl7_timestamp(at)
    return "\r".join([f"MSH|^~\\&|HIS|HOSP|NEOPAIN|NICU|{t}||ADT^{event}^ADT_{event}|{control}|P|2.5",
                      f"EVN|{event}|{t}||||{t}", pid or PID.format(mrn=mrn), pv1]) + "\r"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[PatientRegistry]:
    reg = PatientRegistry(tmp_path / "patients.sqlite")
    yield reg
    reg.close()


@pytest.fixture
def listener(registry: PatientRegistry) -> Iterator[AdtListener]:
    lst = AdtListener(registry, "127.0.0.1", 0).start()
    yield lst
    lst.stop()


@pytest.fixture
def adt_client(listener: AdtListener) -> Iterator[hl7.MllpClient]:
    client = hl7.MllpClient("127.0.0.1", listener.port, timeout_s=5)
    yield client
    client.close()


def test_acks_over_mllp_name_what_is_wrong(registry: PatientRegistry, adt_client: hl7.MllpClient) -> None:
    now = datetime.now(timezone.utc)
    assert adt_client.send(adt("A01", "c1", at=now)).code == "AA"
    assert adt_client.send(adt("A01", "c1", at=now)).text == "already applied"  # a resend: applied once
    assert len(registry.stays()) == 1 and registry.bed_of("HOSP", "1001") == "nicu/3"
    wrong = [(adt("A01", "c2", at=now, pid="PID|1||1001^^^^MR||DOE^X"), "AE", "PID-3.4"),
             (adt("A01", "c3", at=now, pv1="PV1|1|I|nicu^12"), "AE", "PV1-3.3"),
             (adt("A01", "c4", at=now, pid="PID|1||1001^^^HOSP^MR||DOE^X||2026|F"), "AE", "PID-7"),
             (adt("A08", "c5", at=now), "AR", "MSH-9.2"),
             (adt("A01", "c8", at=now).replace("|P|2.5", "|P|2.9"), "AR", "MSH-12"),
             (adt("A03", "c6", at=now, mrn="404"), "AE", "PID-3"),
             (adt("A01", "c7", at=now).replace(hl7.hl7_timestamp(now), now.strftime("%Y%m%d%H%M")), "AE", "EVN-6")]
    for message, code, where in wrong:
        with pytest.raises(hl7.MllpError, match=f"{code} for .*: {where.replace('.', '[.]')}: ") as exc:
            adt_client.send(message)
        assert not exc.value.retry
    assert len(registry.stays()) == 1  # nothing wrong was applied
    assert adt_client.send(adt("A01", "c4", at=now, pid=PID.format(mrn="1002"))).accepted  # c4 corrected: applied


def test_ack_of_unreadable_input_is_a_reject(registry: PatientRegistry) -> None:
    ack = hl7.parse_ack(handle_message(registry, "this is not HL7"))
    assert ack.code == "AR" and "MSH" in ack.text


def test_a02_over_mllp_moves_the_patient_and_later_scores_follow(
        broker: Any, device: Any, mllp_server: Any, registry: PatientRegistry, adt_client: hl7.MllpClient,
        tmp_path: Path, caplog: pytest.LogCaptureFixture, send_score: Any, wait: Any) -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message
    from fhir.resources.R4B.observation import Observation

    bridge = Bridge(fhir_sink=fhir.FhirFileSink(tmp_path / "fhir"), patients=registry, retry_min_s=0.05,
                    mllp=hl7.MllpClient("127.0.0.1", mllp_server.port, timeout_s=5))
    service = BridgeService(bridge, BrokerOptions(port=broker.port))
    service.start(5)
    try:
        bed3, bed4, bed5 = device(broker.port, "3"), device(broker.port, "4"), device(broker.port, "5")
        now = datetime.now(timezone.utc)
        assert adt_client.send(adt("A01", "a1", at=now - timedelta(seconds=120))).accepted  # into nicu/3
        admitted = [send_score(bed3, 2.0)["message_id"]]
        assert wait(lambda: bridge.stats.delivered == 1), bridge.stats  # before the A02: its window
        # also lies after the A02's event time, so handled after it, it would rightly go out location-only
        # A02 to nicu/4, dated 10 s ago; then a late score of nicu/3 from before it and scores from after it.
        assert adt_client.send(adt("A02", "a2", at=now - timedelta(seconds=10),
                                   pv1="PV1|1|I|nicu^^4|||nicu^^3")).accepted
        before_transfer = send_score(bed3, 3.0, ended_ago_s=20)["message_id"]
        after_new_bed, after_old_bed = send_score(bed4, 4.0)["message_id"], send_score(bed3, 5.0)["message_id"]
        with caplog.at_level(logging.INFO, logger="appliance.station.bridge"):
            unassigned = [send_score(bed5, n)["message_id"] for n in (1.0, 1.5, 2.5)]
            assert wait(lambda: bridge.stats.delivered == 7), bridge.stats
    finally:
        service.stop()
    oru = {hl7.parse_segments(m)[0][9]: m for m in mllp_server.messages()}
    obs = {p.stem.removeprefix("Observation-"): json.loads(p.read_text()) for p in (tmp_path / "fhir").glob("*.json")}
    assert len(oru) == len(obs) == 7
    for mid in (*admitted, before_transfer, after_new_bed):  # the patient's: PID-3/5 filled, STRICT-valid
        parse_message(oru[mid], validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate()
        pid = hl7.parse_segments(oru[mid])[1]
        assert pid[3] == "1001^^^HOSP&2.16.840.1.113883.3.999&ISO^MR" and pid[5] == "DOE^BABY GIRL^^^^^L"
        subject = Observation.model_validate(obs[mid]).subject
        assert subject.type == "Patient" and subject.identifier.value == "1001"
        assert subject.identifier.system == "urn:oid:2.16.840.1.113883.3.999"
    for mid in (after_old_bed, *unassigned):  # nobody in the bed for the window: location only
        pid, pv1 = hl7.parse_segments(oru[mid])[1:3]
        assert pid[1:] == ["", "", ""] and pv1[0] == "PV1" and pv1[3].startswith("nicu^^")
        assert obs[mid]["subject"]["type"] == "Location"
        Observation.model_validate(obs[mid])
    assert hl7.parse_segments(oru[before_transfer])[2][3] == "nicu^^3"  # still the old bed's location
    assert (bridge.stats.with_patient, bridge.stats.location_only) == (3, 4)
    said = [r for r in caplog.records if "nicu/5" in r.getMessage()]
    assert len(said) == 1 and "location-only" in said[0].getMessage()  # once per change, not per score


def test_bridge_command_with_its_own_adt_listener(broker: Any, device: Any, send_score: Any, unused_port: int,
                                                  tmp_path: Path, wait: Any) -> None:
    """`neopain bridge --patients DB --adt-listen HOST:PORT` as its own process: the command line wires the
    listener and the registry; SIGTERM ends it with its summary."""
    import signal
    import subprocess
    import sys

    out, db = tmp_path / "fhir", tmp_path / "station" / "patients.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", "bridge", "--port", str(broker.port),
                             "--fhir-out", str(out), "--patients", str(db), "--adt-listen",
                             f"127.0.0.1:{unused_port}", "--no-confirm"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    try:
        client = hl7.MllpClient("127.0.0.1", unused_port, timeout_s=5)
        acked: list[str] = []

        def admit() -> bool:
            try:
                acked.append(client.send(adt("A01", "cli-1", at=datetime.now(timezone.utc) - timedelta(seconds=60),
                                             pv1="PV1|1|I|nicu^^9")).code)
                return True
            except hl7.MllpError as exc:
                assert exc.retry, exc  # only "not listening yet" may be retried
                return False

        assert wait(admit, 15) and acked == ["AA"]
        client.close()
        pub = device(broker.port, "9")
        assert wait(lambda: "neopain/+/+/score" in broker.log_text())  # the bridge subscribed
        mid = send_score(pub, 3.0)["message_id"]
        assert wait(lambda: (out / f"Observation-{mid}.json").exists())
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert "with patient 1, location only 0" in stdout
    subject = json.loads((out / f"Observation-{mid}.json").read_text())["subject"]
    assert subject["type"] == "Patient" and subject["identifier"]["value"] == "1001"
    kept = PatientRegistry(db)  # the assignment is in the file for the next start
    assert kept.bed_of("HOSP", "1001") == "nicu/9"
    kept.close()
