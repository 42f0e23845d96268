"""FHIR R4 bridge: one neopain score message -> one FHIR R4 ``Observation`` (JSON), and where to put it.

No LOINC code for the NIPS total is verified (see shared reference, "Interoperability"), so the score uses a
local code system; hospital terminology services can map it. Choices that matter to a receiving system:

- ``identifier`` = the score's ``message_id`` (``urn:ietf:rfc:3986|urn:uuid:<id>``) and ``id`` = the same
  UUID: a re-delivered score maps to the *same* resource, so files overwrite themselves and a server that
  honours conditional create (``If-None-Exist``) stores it once.
- ``effectivePeriod`` is the scored window in UTC (what the number describes); ``issued`` is when the device
  built the message.
- ``device`` refers to ``Device/<device_id>`` when the id is a valid FHIR id, else by identifier, so an odd
  device id never makes an invalid reference.
- ``subject`` is the patient whose stay in the bed covers the scored window (``patients.PatientRegistry``, fed
  by the hospital's ADT): a logical reference of type ``Patient`` by identifier -- the MRN, with the assigning
  authority as the system (``urn:oid:<OID>`` when the ADT gave an ISO universal id, the id itself when it is a
  URI, else ``<mrn system base>/<authority>``) and identifier type ``MR`` -- because the bridge does not know the
  Patient's id on the hospital's server, but the server resolves identifiers. With no patient it is the bed (a
  ``Location`` by identifier): never a guessed patient.

The module is pure (dicts in, dicts out) apart from the two sinks at the end; ``validate_observation``
checks the R4 rules that can be checked offline, so the bridge refuses to emit what a server would reject.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from appliance.mqtt import messages
from appliance.isotime import parse_iso8601
from appliance.station.patients import Patient

log = logging.getLogger(__name__)

CODE_SYSTEM = "https://neopain.example/fhir/CodeSystem/scores"
BED_SYSTEM = "https://neopain.example/fhir/NamingSystem/bed"
DEVICE_SYSTEM = "https://neopain.example/fhir/NamingSystem/device-id"
#: Base of the MRN identifier system for an assigning authority the ADT named only by its namespace id (a
#: site sets its own with ``neopain bridge --mrn-system``, the URI its FHIR server knows its MRNs by).
MRN_SYSTEM_BASE = "https://neopain.example/fhir/NamingSystem/mrn"
IDENTIFIER_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: Mode of the Observation files: owner read/write, group read. An integration engine reading the folder runs
#: as another user, so the owner alone (0600, mkstemp's mode) locks it out; put it in the bridge's group. Not
#: world-readable: the files name a patient. ``--fhir-file-mode`` changes it.
FHIR_FILE_MODE = 0o640
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
URI_IDENTIFIER = "urn:ietf:rfc:3986"

#: Local codes and their displays; the NIPS items follow ``messages.NIPS_ITEMS``.
CODES: dict[str, str] = {
    "nips-total": "Neonatal Infant Pain Scale (NIPS) total score, automated estimate",
    "pain-intensity": "Pain intensity 0-10 derived from the NIPS estimate",
    "confidence": "Confidence of the automated estimate (0-1)",
    **{f"nips-{k.replace('_', '-')}": f"NIPS item: {k.replace('_', ' ')}" for k in messages.NIPS_ITEMS},
}

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_FHIR_DATETIME = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$"
)
_FHIR_INSTANT = re.compile(
    r"^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$"
)
_OBS_STATUS = {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}


# ------------------------------------------------------------------------------------------ score access
def _field(score: Mapping[str, Any], path: str) -> Any:
    """``score["a"]["b"]`` for ``path`` "a.b", with a ValueError naming the missing field."""
    cur: Any = score
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise ValueError(f"score.{path}: missing")
        cur = cur[part]
    return cur


def _num(score: Mapping[str, Any], path: str, lo: float, hi: float) -> float:
    v = _field(score, path)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ValueError(f"score.{path}: expected a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _utc(score: Mapping[str, Any], path: str) -> str:
    v = _field(score, path)
    if not isinstance(v, str) or not _FHIR_INSTANT.match(v):
        raise ValueError(f"score.{path}: expected an ISO 8601 UTC time with zone, got {v!r}")
    return v


def _quantity(value: float) -> dict[str, Any]:
    """A dimensionless score in UCUM (annotation ``{score}`` is the UCUM way to say "a unitless score")."""
    return {"value": round(value, 4), "unit": "score", "system": UCUM, "code": "{score}"}


def _concept(code: str) -> dict[str, Any]:
    return {"coding": [{"system": CODE_SYSTEM, "code": code, "display": CODES[code]}], "text": CODES[code]}


def _device_ref(device_id: str) -> dict[str, Any]:
    if _FHIR_ID.match(device_id):
        return {"reference": f"Device/{device_id}", "display": f"neopain appliance {device_id}"}
    return {"identifier": {"system": DEVICE_SYSTEM, "value": device_id}, "display": f"neopain appliance {device_id}"}


# ------------------------------------------------------------------------------------------ conversion
def score_to_observation(
    score: Mapping[str, Any],
    *,
    site: str | None = None,
    bed: str | None = None,
    patient: Patient | None = None,
    mrn_system: str = MRN_SYSTEM_BASE,
) -> dict[str, Any]:
    """Map one score message (``messages.build_score`` shape) to a FHIR R4 Observation dict.

    ``patient``: who was in the bed for the whole window (its ``subject``); None: the bed is the subject.

    Raises ``ValueError`` naming the score field when the message cannot make a valid Observation (missing
    window, NIPS out of range, ...): a bridge must not invent values.
    """
    if _field(score, "type") != "score":
        raise ValueError(f"score.type: expected 'score', got {score.get('type')!r}")
    message_id = str(_field(score, "message_id"))
    if not _FHIR_ID.match(message_id):
        raise ValueError(f"score.message_id: {message_id!r} cannot be a FHIR id")
    device_id = _field(score, "device_id")
    if not isinstance(device_id, str) or not device_id:
        raise ValueError(f"score.device_id: expected a non-empty string, got {device_id!r}")
    nips = _num(score, "nips", 0, messages.NIPS_MAX)
    intensity = _num(score, "intensity", 0, messages.INTENSITY_MAX)
    start, end = _utc(score, "window.start_utc"), _utc(score, "window.end_utc")
    if _parse_instant(end) < _parse_instant(start):
        raise ValueError(f"score.window: end_utc {end} is before start_utc {start}")
    model = _field(score, "model_version")
    calibration = score.get("calibration_version", "none")

    components: list[dict[str, Any]] = [
        {"code": _concept("pain-intensity"), "valueQuantity": _quantity(intensity)},
    ]
    if "confidence" in score:
        components.append({"code": _concept("confidence"),
                           "valueQuantity": {"value": round(_num(score, "confidence", 0, 1), 4), "unit": "1",
                                             "system": UCUM, "code": "1"}})
    for item, hi in messages.NIPS_ITEMS.items():
        items = score.get("nips_items") or {}
        if item in items:
            value = _num(score, f"nips_items.{item}", 0, hi)
            components.append({"code": _concept(f"nips-{item.replace('_', '-')}"), "valueQuantity": _quantity(value)})

    used = [m for m, e in (score.get("modalities") or {}).items() if isinstance(e, Mapping) and e.get("used")]
    method = f"neopain automated multimodal estimate ({'+'.join(used) or 'unknown inputs'}); model {model}; " \
             f"calibration {calibration}"
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": message_id,
        "identifier": [{"system": URI_IDENTIFIER, "value": f"urn:uuid:{message_id}"}],
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}],
        "code": _concept("nips-total"),
        "effectivePeriod": {"start": start, "end": end},
        "valueQuantity": _quantity(nips),
        "method": {"text": method},
        "device": _device_ref(device_id),
        "component": components,
    }
    created = score.get("created_utc")
    if isinstance(created, str) and _FHIR_INSTANT.match(created):
        obs["issued"] = created
    if patient is not None:
        obs["subject"] = patient_reference(patient, mrn_system)
    elif site and bed:
        obs["subject"] = {"type": "Location", "identifier": {"system": BED_SYSTEM, "value": f"{site}/{bed}"},
                          "display": f"{site} bed {bed}"}
    flags = score.get("quality_flags") or []
    if flags:
        obs["note"] = [{"text": "quality flags: " + ", ".join(str(f) for f in flags)}]
    return obs


def patient_identifier_system(patient: Patient, mrn_system: str = MRN_SYSTEM_BASE) -> str:
    """The URI of the patient's MRN namespace (see the module doc for the three cases)."""
    kind = (patient.authority_id_type or "").upper()
    if patient.authority_id and kind == "ISO":
        return f"urn:oid:{patient.authority_id}"
    uri = patient.authority_id and patient.authority_id.startswith(("http:", "https:", "urn:"))
    if patient.authority_id and (kind in ("URI", "URL") or uri):
        return patient.authority_id
    return f"{mrn_system.rstrip('/')}/{urllib.parse.quote(patient.authority, safe='')}"


def patient_reference(patient: Patient, mrn_system: str = MRN_SYSTEM_BASE) -> dict[str, Any]:
    """A logical Reference(Patient): type, MRN identifier (system, value, type MR) and the name as display."""
    return {"type": "Patient",
            "identifier": {"type": {"coding": [{"system": IDENTIFIER_TYPE, "code": "MR",
                                                "display": "Medical record number"}]},
                           "system": patient_identifier_system(patient, mrn_system), "value": patient.mrn},
            "display": patient.display()}


def _parse_instant(text: str) -> datetime:
    return parse_iso8601(text)


# ------------------------------------------------------------------------------------------ validation
def validate_observation(obs: Mapping[str, Any]) -> list[str]:
    """Offline R4 checks of an Observation: required elements, types, value formats, invariants.

    Returns the problems found (empty = valid). Covers: ``resourceType``; ``status`` (required, code set);
    ``code`` (required CodeableConcept); id format; dateTime/instant formats; Quantity and Coding element
    types; Period start <= end (per-1); obs-6 (dataAbsentReason only without value); obs-7 (no component code
    equal to the Observation code); Reference carries reference, identifier or display (ref-1 in spirit).
    It is not a full profile validator; the tests also run the ``fhir.resources`` models where installed.
    """
    errs: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            errs.append(msg)

    need(obs.get("resourceType") == "Observation", "resourceType: must be 'Observation'")
    need(obs.get("status") in _OBS_STATUS, f"status: {obs.get('status')!r} is not an R4 ObservationStatus code")
    if "id" in obs:
        need(isinstance(obs["id"], str) and bool(_FHIR_ID.match(obs["id"])), f"id: {obs['id']!r} is not a FHIR id")
    _check_concept(obs.get("code"), "code", errs, required=True)
    for i, c in enumerate(obs.get("category", [])):
        _check_concept(c, f"category[{i}]", errs, required=True)
    for i, ident in enumerate(obs.get("identifier", [])):
        need(isinstance(ident, Mapping) and isinstance(ident.get("value"), str), f"identifier[{i}].value: string")
    if "effectivePeriod" in obs:
        p = obs["effectivePeriod"]
        for k in ("start", "end"):
            if k in p:
                need(isinstance(p[k], str) and bool(_FHIR_DATETIME.match(p[k])), f"effectivePeriod.{k}: not a dateTime")
        if not errs and "start" in p and "end" in p and "T" in p["start"] and "T" in p["end"]:
            need(_parse_instant(p["start"]) <= _parse_instant(p["end"]), "effectivePeriod: start after end (per-1)")
    if "issued" in obs:
        need(isinstance(obs["issued"], str) and bool(_FHIR_INSTANT.match(obs["issued"])), "issued: not an instant")
    value_keys = [k for k in obs if k.startswith("value")]
    need(len(value_keys) <= 1, f"value[x]: only one allowed, got {value_keys}")
    need(not (value_keys and "dataAbsentReason" in obs), "obs-6: dataAbsentReason only when value[x] is absent")
    if "valueQuantity" in obs:
        _check_quantity(obs["valueQuantity"], "valueQuantity", errs)
    for name in ("device", "subject"):
        if name in obs:
            r = obs[name]
            need(isinstance(r, Mapping) and any(k in r for k in ("reference", "identifier", "display")),
                 f"{name}: a Reference needs reference, identifier or display")
    if "method" in obs:
        _check_concept(obs["method"], "method", errs, required=False)
    code_codings = {(c.get("system"), c.get("code")) for c in (obs.get("code") or {}).get("coding", [])}
    for i, comp in enumerate(obs.get("component", [])):
        where = f"component[{i}]"
        _check_concept(comp.get("code"), f"{where}.code", errs, required=True)
        comp_codings = {(c.get("system"), c.get("code")) for c in (comp.get("code") or {}).get("coding", [])}
        need(not (comp_codings & code_codings), f"{where}.code: obs-7, must differ from Observation.code")
        if "valueQuantity" in comp:
            _check_quantity(comp["valueQuantity"], f"{where}.valueQuantity", errs)
    return errs


def _check_concept(c: Any, where: str, errs: list[str], *, required: bool) -> None:
    if not isinstance(c, Mapping):
        errs.append(f"{where}: a CodeableConcept (object) is required")
        return
    codings = c.get("coding", [])
    if required and not codings and not c.get("text"):
        errs.append(f"{where}: needs a coding or text")
    for i, cd in enumerate(codings):
        if not isinstance(cd, Mapping) or not isinstance(cd.get("code"), str) or not cd["code"].strip():
            errs.append(f"{where}.coding[{i}].code: non-empty string required")
        elif "system" in cd and not isinstance(cd["system"], str):
            errs.append(f"{where}.coding[{i}].system: must be a uri string")


def _check_quantity(q: Any, where: str, errs: list[str]) -> None:
    if not isinstance(q, Mapping):
        errs.append(f"{where}: a Quantity (object) is required")
        return
    v = q.get("value")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        errs.append(f"{where}.value: decimal required, got {v!r}")
    if "code" in q and "system" not in q:
        errs.append(f"{where}: qty-3, a code needs a system")


# ------------------------------------------------------------------------------------------ sinks
def parse_file_mode(text: str, option: str = "--fhir-file-mode") -> int:
    """An octal file mode (``640``, ``0640``, ``0o640``) for the Observation files; ValueError naming ``option``.

    Refused: anything but octal digits, bits beyond 0777, execute bits (a JSON file is not a program), a mode the
    bridge itself could not read back, and world-writable modes (anyone could alter a clinical record)."""
    digits = text.strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise ValueError(f"{option}: expected an octal mode such as 640 (0-777), got {text!r}")
    mode = int(digits, 8)
    if mode & 0o111:
        raise ValueError(f"{option}: {mode:04o} has execute bits; a JSON file needs none (e.g. 640)")
    if not mode & 0o400:
        raise ValueError(f"{option}: {mode:04o} does not let the owner (the bridge) read its own files")
    if mode & 0o002:
        raise ValueError(f"{option}: {mode:04o} is world-writable; anyone could alter a clinical record")
    return mode


class FhirFileSink:
    """Writes ``Observation-<id>.json`` into a folder, atomically (temp file + rename), with ``mode``.

    The name is the message id, so a re-delivered score overwrites its own file instead of adding one. The mode
    is set on the file itself (``fchmod``, before the rename), so the process umask cannot change it and a
    reader never sees the file with another mode. A folder the sink creates gets the matching directory mode
    (search bit wherever the files are readable); an existing folder is left as it is.
    """

    def __init__(self, folder: Path, *, mode: int = FHIR_FILE_MODE) -> None:
        self.folder = Path(folder)
        self.mode = mode
        if not self.folder.is_dir():
            self.folder.mkdir(parents=True, exist_ok=True)
            os.chmod(self.folder, 0o700 | mode | ((mode & 0o044) >> 2))

    def send(self, observation: Mapping[str, Any]) -> Path:
        path = self.folder / f"Observation-{observation['id']}.json"
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".json")
        try:
            os.fchmod(fd, self.mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(observation, f, indent=2, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


class FhirHttpError(OSError):
    """The FHIR server refused or could not be reached; ``retry`` says whether trying again may help."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class FhirHttpSink:
    """POSTs each Observation to ``<base>/Observation`` as a conditional create (``If-None-Exist``).

    ``base_url`` is the FHIR server base (``.../fhir``); a URL already ending in ``/Observation`` is used as is.
    ``bearer_token`` (read from a file by the CLI) goes into ``Authorization``. 4xx other than 408/429 are
    permanent (the resource is wrong); 5xx, 408, 429 and network errors are worth a retry.
    """

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, bearer_token: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--fhir-url: expected an http(s) URL, got {base_url!r}")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/Observation") else url + "/Observation"
        self.timeout_s = timeout_s
        self._token = bearer_token

    def send(self, observation: Mapping[str, Any]) -> int:
        body = json.dumps(observation, separators=(",", ":")).encode("utf-8")
        ident = observation["identifier"][0]
        headers = {
            "Content-Type": "application/fhir+json; fhirVersion=4.0",
            "Accept": "application/fhir+json",
            "If-None-Exist": f"identifier={ident['system']}|{ident['value']}",
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            retry = exc.code >= 500 or exc.code in (408, 429)
            raise FhirHttpError(f"FHIR POST {self.url}: HTTP {exc.code} {exc.reason}", retry=retry) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise FhirHttpError(f"FHIR POST {self.url}: {getattr(exc, 'reason', exc)}", retry=True) from exc
