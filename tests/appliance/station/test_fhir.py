"""Score -> FHIR R4 Observation: content, offline R4 checks, the fhir.resources validator, and both sinks."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.station import fhir

from appliance.mqtt import messages


def test_observation_carries_the_score(make_score: Any) -> None:
    s = make_score(nips=3.5, items={"cry": 2, "arms": 1, "legs": 0})
    obs = fhir.score_to_observation(s, site="nicu", bed="3")
    assert fhir.validate_observation(obs) == []
    assert obs["resourceType"] == "Observation" and obs["status"] == "final"
    assert obs["category"][0]["coding"][0] == {"system": fhir.OBSERVATION_CATEGORY, "code": "survey",
                                               "display": "Survey"}
    coding = obs["code"]["coding"][0]
    assert (coding["system"], coding["code"]) == (fhir.CODE_SYSTEM, "nips-total") and coding["display"]
    assert obs["valueQuantity"]["value"] == s["nips"] and obs["valueQuantity"]["code"] == "{score}"
    assert obs["effectivePeriod"] == {"start": s["window"]["start_utc"], "end": s["window"]["end_utc"]}
    assert obs["device"]["reference"] == "Device/dev-1"
    assert "fusion-1.0" in obs["method"]["text"] and "cal-7" in obs["method"]["text"]
    assert obs["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{s['message_id']}"}]
    assert obs["id"] == s["message_id"] and obs["issued"] == s["created_utc"]
    assert obs["subject"]["identifier"]["value"] == "nicu/3"
    comps = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in obs["component"]}
    assert comps["pain-intensity"] == s["intensity"]
    assert comps["nips-cry"] == 2 and comps["nips-arms"] == 1 and comps["nips-legs"] == 0
    assert "nips-breathing" not in comps  # only items the score carries
    assert json.loads(json.dumps(obs)) == obs  # plain JSON types only


def test_same_score_maps_to_the_same_resource(make_score: Any) -> None:
    s = make_score()
    assert fhir.score_to_observation(s) == fhir.score_to_observation(copy.deepcopy(s))


def test_odd_device_id_becomes_an_identifier_reference(make_score: Any) -> None:
    obs = fhir.score_to_observation(make_score(device_id="bed 3/cam#1"))
    assert "reference" not in obs["device"] and obs["device"]["identifier"]["value"] == "bed 3/cam#1"
    assert fhir.validate_observation(obs) == []


@pytest.mark.parametrize("mutate,field", [
    (lambda s: s.pop("window"), "score.window"),
    (lambda s: s.update(nips=8), "score.nips"),
    (lambda s: s.update(intensity="5"), "score.intensity"),
    (lambda s: s["window"].update(end_utc="yesterday"), "score.window.end_utc"),
    (lambda s: s.update(type="health"), "score.type"),
    (lambda s: s.update(message_id="a b"), "score.message_id"),
    (lambda s: s["nips_items"].update(cry=3), "score.nips_items.cry"),
])
def test_bad_score_is_refused_naming_the_field(make_score: Any, mutate: Any, field: str) -> None:
    s = make_score(items={"cry": 1})
    mutate(s)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        fhir.score_to_observation(s)


@pytest.mark.parametrize("mutate,problem", [
    (lambda o: o.update(status="done"), "status"),
    (lambda o: o.pop("code"), "code"),
    (lambda o: o.update(id="has space"), "id"),
    (lambda o: o["effectivePeriod"].update(start="2025-13-01T00:00:00Z"), "effectivePeriod.start"),
    (lambda o: o["effectivePeriod"].update(start="2999-01-01T00:00:00Z"), "per-1"),
    (lambda o: o.update(dataAbsentReason={"text": "x"}), "obs-6"),
    (lambda o: o["component"][0].update(code=copy.deepcopy(o["code"])), "obs-7"),
    (lambda o: o["valueQuantity"].update(value="3"), "valueQuantity.value"),
    (lambda o: o.update(issued="2025-01-01"), "issued"),
    (lambda o: o.update(device={}), "device"),
])
def test_offline_r4_checks_catch_each_rule(make_score: Any, mutate: Any, problem: str) -> None:
    obs = fhir.score_to_observation(make_score())
    mutate(obs)
    errs = fhir.validate_observation(obs)
    assert any(problem in e for e in errs), errs


def test_fhir_resources_validator_accepts_it(make_score: Any) -> None:
    """fhir.resources (PyPI) models; its R4B Observation is structurally the R4 one (R4B changed other resources)."""
    obs_model = pytest.importorskip("fhir.resources.R4B.observation")
    from pydantic import ValidationError

    obs = fhir.score_to_observation(make_score(items={"cry": 2}), site="nicu", bed="1")
    parsed = obs_model.Observation.model_validate(obs)
    assert parsed.valueQuantity.value == obs["valueQuantity"]["value"]
    broken = dict(obs, valueQuantity={"value": "high"})
    with pytest.raises(ValidationError):
        obs_model.Observation.model_validate(broken)
    with pytest.raises(ValidationError):
        obs_model.Observation.model_validate(dict(obs, unknownElement=1))


def test_file_sink_is_idempotent_and_atomic(tmp_path: Path, make_score: Any) -> None:
    sink = fhir.FhirFileSink(tmp_path / "out")
    obs = fhir.score_to_observation(make_score())
    p1 = sink.send(obs)
    p2 = sink.send(obs)
    assert p1 == p2 and [p.name for p in (tmp_path / "out").iterdir()] == [p1.name]
    assert json.loads(p1.read_text()) == obs


def test_http_sink_conditional_create(fhir_server: Any, make_score: Any) -> None:
    sink = fhir.FhirHttpSink(fhir_server.url, bearer_token="tok")
    obs = fhir.score_to_observation(make_score())
    assert sink.send(obs) == 201
    assert sink.send(obs) == 200  # the server recognised the identifier: not stored twice
    assert len(fhir_server.stored) == 1
    h = fhir_server.headers[0]
    assert h["If-None-Exist"] == f"identifier=urn:ietf:rfc:3986|urn:uuid:{obs['id']}"
    assert h["Authorization"] == "Bearer tok" and h["Content-Type"].startswith("application/fhir+json")
    assert fhir_server.posts[0] == obs


def test_http_sink_errors_say_whether_to_retry(fhir_server: Any, make_score: Any) -> None:
    sink = fhir.FhirHttpSink(fhir_server.url)
    obs = fhir.score_to_observation(make_score())
    fhir_server.fail_next[:] = [503, 422]
    with pytest.raises(fhir.FhirHttpError, match="503") as e1:
        sink.send(obs)
    assert e1.value.retry
    with pytest.raises(fhir.FhirHttpError, match="422") as e2:
        sink.send(obs)
    assert not e2.value.retry
    down = fhir.FhirHttpSink("http://127.0.0.1:9/fhir", timeout_s=1)
    with pytest.raises(fhir.FhirHttpError) as e3:
        down.send(obs)
    assert e3.value.retry
    with pytest.raises(ValueError, match="--fhir-url"):
        fhir.FhirHttpSink("ftp://x")


def test_codes_cover_every_nips_item() -> None:
    for item in messages.NIPS_ITEMS:
        assert f"nips-{item.replace('_', '-')}" in fhir.CODES


def test_subject_is_the_patient_by_identifier_and_validates(make_score: Any) -> None:
    from fhir.resources.R4B.observation import Observation

    from appliance.station.patients import Patient

    cases = [(Patient(mrn="42", authority="HOSP", family="DOE", given="Baby", authority_id="1.2.3",
                      authority_id_type="ISO"), "urn:oid:1.2.3"),
             (Patient(mrn="42", authority="HOSP", family="DOE", given="", authority_id="https://hosp.example/mrn",
                      authority_id_type="URI"), "https://hosp.example/mrn"),
             (Patient(mrn="42", authority="St Mary's", family="DOE", given="Baby"),
              "https://hosp.example/ids/St%20Mary%27s")]
    for patient, system in cases:
        obs = fhir.score_to_observation(make_score(), site="nicu", bed="3", patient=patient,
                                        mrn_system="https://hosp.example/ids/")
        assert fhir.validate_observation(obs) == []
        subject = Observation.model_validate(obs).subject
        assert subject.type == "Patient" and subject.display == patient.display()
        assert (subject.identifier.system, subject.identifier.value) == (system, "42")
        assert subject.identifier.type.coding[0].code == "MR"


def test_file_mode_is_what_was_asked_whatever_the_umask(tmp_path: Path, make_score: Any) -> None:
    import os
    import stat

    old = os.umask(0o077)  # a service's strict umask must not undo the configured mode
    try:
        default = fhir.FhirFileSink(tmp_path / "default").send(fhir.score_to_observation(make_score()))
        shared = fhir.FhirFileSink(tmp_path / "shared", mode=0o644).send(fhir.score_to_observation(make_score()))
    finally:
        os.umask(old)
    assert stat.S_IMODE(default.stat().st_mode) == fhir.FHIR_FILE_MODE == 0o640
    assert stat.S_IMODE(default.parent.stat().st_mode) == 0o750  # the group can list what it can read
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644 and stat.S_IMODE(shared.parent.stat().st_mode) == 0o755


@pytest.mark.parametrize("text,mode", [("640", 0o640), ("0600", 0o600), ("0o644", 0o644), ("440", 0o440)])
def test_parse_file_mode(text: str, mode: int) -> None:
    assert fhir.parse_file_mode(text) == mode


@pytest.mark.parametrize("text,why", [("8", "octal"), ("1000", "octal"), ("", "octal"), ("750", "execute"),
                                      ("040", "owner"), ("646", "world-writable")])
def test_parse_file_mode_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=f"--fhir-file-mode: .*{why}"):
        fhir.parse_file_mode(text)


def test_bridge_cli_refuses_a_bad_file_mode(capsys: Any) -> None:
    from appliance.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bridge", "--fhir-out", "x", "--fhir-file-mode", "666"])
    assert exc.value.code == 2 and "--fhir-file-mode" in capsys.readouterr().err
