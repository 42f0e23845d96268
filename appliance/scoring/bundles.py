"""Signed calibration bundles as the device reads them: the key, the signature and the checks.

Why here and not in calibration/: the daemon verifies every bundle it loads (at start and on SIGHUP) with
exactly these functions, and ``neopain calibrate install/rollback`` (calibration/bundle.py, which also makes
and signs bundles) verifies with the same ones, so "what the device accepts" is written once. The format
is described in calibration/bundle.py.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.scoring.calibration_map import (BUNDLE_FILE, BUNDLE_FORMAT, CalibrationError, CalibrationMap,
                                               UNCALIBRATED, parse_calibration)

FORMAT = BUNDLE_FORMAT
FORMAT_VERSION = 1
ALG = "HMAC-SHA256"
CURRENT = "current"  # the installed layout's symlink to the active bundle (calibration.bundle = <dir>/current)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class BundleError(CalibrationError):
    """A bundle that must not be used (unsigned, bad signature, foreign key, wrong model, malformed)."""


def read_key(path: str | Path) -> bytes:
    """The device key; refuses a key file that group or others can read (a leaked key forges bundles)."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"calibration key {path}: cannot read ({exc})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise BundleError(f"calibration key {path}: mode {stat.S_IMODE(st.st_mode):04o} lets group/others read "
                          f"it; chmod 600 {path}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise BundleError(f"calibration key {path}: expected hex text") from None
    if len(key) < 16:
        raise BundleError(f"calibration key {path}: {len(key)} bytes; at least 16 needed")
    return key


def key_id(key: bytes) -> str:
    """A public name for a key (not secret: a hash prefix) so errors can say *which* key signed a bundle."""
    return hashlib.sha256(key).hexdigest()[:16]


def canonical(payload: Any) -> bytes:
    """The bytes that are signed: one spelling per JSON value, so re-serialising never breaks a signature."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def check_version(version: Any, where: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version in (CURRENT, UNCALIBRATED):
        raise BundleError(f"{where}: version: {version!r} must match {_VERSION_RE.pattern} and not be "
                          f"{CURRENT!r}/{UNCALIBRATED!r} (it names the install folder)")
    return version


def sign(payload: dict[str, Any], key: bytes) -> dict[str, str]:
    return {"alg": ALG, "key_id": key_id(key),
            "value": hmac.new(key, canonical(payload), hashlib.sha256).hexdigest()}


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature, model and map were checked."""

    map: CalibrationMap
    payload: dict[str, Any]
    source: str

    @property
    def version(self) -> str:
        return self.map.version


def verify_bundle(bundle: Any, key: bytes, *, model_version: str | None = None,
                  where: str = "<bundle>") -> VerifiedBundle:
    """Check format, signature (constant-time compare), key, map and model; raise :class:`BundleError`."""
    if not isinstance(bundle, dict):
        raise BundleError(f"{where}: expected a JSON object, got {type(bundle).__name__}")
    if bundle.get("format") != FORMAT:
        raise BundleError(f"{where}: format: expected {FORMAT!r}, got {bundle.get('format')!r} "
                          f"(an unsigned map is not accepted)")
    if bundle.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{where}: format_version: expected {FORMAT_VERSION}, got {bundle.get('format_version')!r}")
    sig = bundle.get("signature")
    if not isinstance(sig, dict) or not isinstance(sig.get("value"), str):
        raise BundleError(f"{where}: signature: missing; unsigned bundles are refused")
    if sig.get("alg") != ALG:
        raise BundleError(f"{where}: signature.alg: expected {ALG!r}, got {sig.get('alg')!r}")
    if sig.get("key_id") != key_id(key):
        raise BundleError(f"{where}: signature.key_id: signed with key {sig.get('key_id')!r}, this device's key is "
                          f"{key_id(key)!r} (a bundle made for another device?)")
    payload = bundle.get("payload")
    if not isinstance(payload, dict):
        raise BundleError(f"{where}: payload: expected a JSON object")
    try:
        expected = hmac.new(key, canonical(payload), hashlib.sha256).hexdigest()
    except ValueError as exc:  # NaN/Infinity smuggled in
        raise BundleError(f"{where}: payload: not canonical JSON ({exc})") from None
    if not hmac.compare_digest(expected, sig["value"]):
        raise BundleError(f"{where}: signature.value: does not match the payload (tampered or corrupted bundle)")
    try:
        cal = parse_calibration(payload.get("map"), where=f"{where}: payload.map")
    except CalibrationError as exc:
        raise BundleError(str(exc)) from None
    check_version(cal.version, f"{where}: payload.map")
    if cal.model_version is None:
        raise BundleError(f"{where}: payload.map.model_version: missing; a bundle must name its model")
    if model_version is not None and cal.model_version != model_version:
        raise BundleError(f"{where}: model_version: bundle made for model {cal.model_version!r}, the engines run "
                          f"{model_version!r}")
    cal = CalibrationMap(cal.version, cal.x, cal.y, cal.model_version, where)
    return VerifiedBundle(cal, payload, where)


def read_bundle(path: str | Path, key: bytes, *, model_version: str | None = None) -> VerifiedBundle:
    """Load and verify ``path`` (a ``bundle.json`` or a folder holding one)."""
    path = Path(path)
    file = path / BUNDLE_FILE if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{file}: not valid JSON: line {exc.lineno}: {exc.msg}") from None
    return verify_bundle(data, key, model_version=model_version, where=str(file))
