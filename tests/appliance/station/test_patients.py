"""The station's patient registry (a real SQLite file): stays over time, windows, persistence, bad input."""
from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from appliance.station.patients import Patient, PatientRegistry, bed_id

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=timezone.utc)
BABY = Patient(mrn="1001", authority="HOSP", family="DOE", given="Baby Girl", birth_date=date(2026, 11, 20), sex="F")
TWIN = Patient(mrn="1002", authority="HOSP", family="DOE", given="Baby Boy")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_admit_transfer_discharge_over_time_and_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "station" / "patients.sqlite"
    reg = PatientRegistry(path)
    reg.admit(BABY, "nicu/3", at(0), source="test")
    reg.transfer(BABY, "nicu/4", at(60))
    reg.discharge("HOSP", "1001", at(120))
    reg.close()
    reg = PatientRegistry(path)  # a station restart keeps every stay
    assert reg.patient_for_bed("nicu/3", at(-1)) is None
    assert reg.patient_for_bed("nicu/3", at(59)) == BABY  # birth date and sex come back too
    assert reg.patient_for_bed("nicu/3", at(60)) is None and reg.patient_for_bed("nicu/4", at(60)) == BABY
    assert reg.patient_for_bed("nicu/4", at(120)) is None and reg.bed_of("HOSP", "1001") is None
    assert [(s.bed_id, s.start, s.end) for s in reg.stays()] == [("nicu/3", at(0), at(60)), ("nicu/4", at(60), at(120))]
    assert reg.stays()[0].source == "test"


def test_a_window_belongs_to_a_patient_only_when_a_stay_covers_all_of_it(tmp_path: Path) -> None:
    reg = PatientRegistry(tmp_path / "p.sqlite")
    reg.admit(BABY, "nicu/3", at(0))
    reg.transfer(BABY, "nicu/4", at(60))
    assert reg.patient_for_window("nicu/3", at(58), at(59.9)) == BABY  # before the transfer, however late it arrives
    assert reg.patient_for_window("nicu/3", at(59), at(61)) is None  # straddles it: nobody
    assert reg.patient_for_window("nicu/4", at(59), at(61)) is None
    assert reg.patient_for_window("nicu/4", at(60), at(61)) == BABY
    assert reg.patient_for_window("nicu/3", at(-2), at(1)) is None  # straddles the admission


def test_admitting_into_an_occupied_bed_ends_the_other_stay_and_says_so(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    reg = PatientRegistry(tmp_path / "p.sqlite")
    reg.admit(BABY, "nicu/3", at(0))
    with caplog.at_level(logging.WARNING, logger="appliance.station.patients"):
        line = reg.admit(TWIN, "nicu/3", at(30))
    assert "displaced HOSP/1001" in line and "HOSP/1001" in caplog.text
    assert reg.assignments(at(31)) == {"nicu/3": TWIN}
    assert reg.patient_for_bed("nicu/3", at(29)) == BABY


def test_discharge_of_nobody_and_bad_input_name_the_field(tmp_path: Path) -> None:
    reg = PatientRegistry(tmp_path / "p.sqlite")
    with pytest.raises(KeyError, match="HOSP/9"):
        reg.discharge("HOSP", "9", at(0))
    with pytest.raises(ValueError, match="bed id.*'nicu3'"):
        reg.admit(BABY, "nicu3", at(0))
    with pytest.raises(ValueError, match="no time zone"):
        reg.patient_for_bed("nicu/3", datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="patient.family"):
        Patient(mrn="1", authority="HOSP", family=" ", given="x")
    with pytest.raises(ValueError, match="patient.sex.*'X'"):
        Patient(mrn="1", authority="HOSP", family="A", given="x", sex="X")
    assert bed_id("nicu", "3") == "nicu/3"
    with pytest.raises(ValueError, match="bed"):
        bed_id("nicu", "3/4")


def test_message_ids_are_applied_once(tmp_path: Path) -> None:
    reg = PatientRegistry(tmp_path / "p.sqlite")
    assert reg.seen_message("ADT^HOSP|1") is False
    assert reg.seen_message("ADT^HOSP|1") is True
    reg.forget_message("ADT^HOSP|1")
    assert reg.seen_message("ADT^HOSP|1") is False
