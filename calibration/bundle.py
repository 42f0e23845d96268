"""Signed, versioned calibration bundles: make, sign, verify, install, list, roll back.

Why a signed bundle and not just the map file: the map changes every published NIPS on a ward. It must be
traceable (who fitted it, when, on how many infants/ratings, how much it improved cross-validated MAE) and it
must not be swappable by anyone who can write a file: the daemon accepts a map only inside a bundle signed
with this device's key and made for the model version its engines run.

Signature: HMAC-SHA256 (stdlib ``hmac``) over the canonical JSON of ``payload`` (sorted keys, no spaces,
ASCII). The ``cryptography`` package (Ed25519) is not installed in the appliance venv, so the symmetric
device key is used; ``key_id`` (first 16 hex digits of SHA-256 of the key) names the key so a bundle signed
for another device is refused with a message that says so rather than "bad signature".

Bundle file (``bundle.json``)::

    {"format": "neopain-calibration-bundle", "format_version": 1,
     "payload": {"map": {<appliance.calibration_map payload: version, model_version, x, y>},
                 "method": "isotonic" | "linear", "fit": {n_infants, n_ratings, cv_mae_before, ...},
                 "created_by": "...", "created_utc": "..."},
     "signature": {"alg": "HMAC-SHA256", "key_id": "...", "value": "<hex>"}}

Installed layout (``bundles_dir``, default ``/var/lib/neopain/calibration``; the daemon's
``calibration.bundle`` is ``<bundles_dir>/current``)::

    bundles/<version>/bundle.json   every installed bundle (never modified after install)
    history.json                    versions in install order (what rollback walks back through)
    current -> bundles/<version>    symlink, swapped atomically (rename over the old link)
"""
from __future__ import annotations

import argparse
import sys
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance.calibration_map import (BUNDLE_FORMAT, CalibrationError, CalibrationMap, UNCALIBRATED,
                                       parse_calibration)

FORMAT = BUNDLE_FORMAT
FORMAT_VERSION = 1
ALG = "HMAC-SHA256"
BUNDLE_FILE = "bundle.json"
CURRENT = "current"
HISTORY = "history.json"
DEFAULT_BUNDLES_DIR = Path("/var/lib/neopain/calibration")
DEFAULT_KEY_FILE = Path("/etc/neopain/calibration.key")
KEY_BYTES = 32
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class BundleError(CalibrationError):
    """A bundle that must not be used (unsigned, bad signature, foreign key, wrong model, malformed)."""


# ------------------------------------------------------------------------------------------------- keys
def generate_key(path: str | Path) -> Path:
    """Write a new random device key (hex text, mode 0600); refuses to overwrite an existing key."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never briefly world-readable
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


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


# ------------------------------------------------------------------------------------------- sign/verify
def canonical(payload: Any) -> bytes:
    """The bytes that are signed: one spelling per JSON value, so re-serialising never breaks a signature."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _check_version(version: Any, where: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version in (CURRENT, UNCALIBRATED):
        raise BundleError(f"{where}: version: {version!r} must match {_VERSION_RE.pattern} and not be "
                          f"{CURRENT!r}/{UNCALIBRATED!r} (it names the install folder)")
    return version


def make_bundle(*, version: str, model_version: str, x: list[float], y: list[float], key: bytes,
                method: str, fit: dict[str, Any] | None = None, created_by: str | None = None,
                created_utc: str | None = None) -> dict[str, Any]:
    """A signed bundle dict (validated: the map goes through the appliance's own parser first)."""
    _check_version(version, "bundle")
    if not isinstance(model_version, str) or not model_version:
        raise BundleError("bundle: model_version: a bundle must name the model it was fitted for")
    map_payload = {"format": "neopain-calibration-map", "format_version": 1, "version": version,
                   "model_version": model_version, "x": [float(v) for v in x], "y": [float(v) for v in y]}
    parse_calibration(map_payload, where="bundle.map")
    payload = {
        "map": map_payload,
        "method": method,
        "fit": dict(fit or {}),
        "created_by": created_by or f"{getpass.getuser()}@{socket.gethostname()}",
        "created_utc": created_utc or datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "payload": payload,
            "signature": sign(payload, key)}


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
    _check_version(cal.version, f"{where}: payload.map")
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


def write_bundle(path: str | Path, bundle: dict[str, Any]) -> Path:
    """Write a bundle file atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(bundle, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------- install/rollback
@dataclass(frozen=True)
class InstalledBundle:
    version: str
    path: Path
    current: bool
    created_utc: str | None
    created_by: str | None
    model_version: str | None
    method: str | None


def _history(bundles_dir: Path) -> list[str]:
    try:
        data = json.loads((bundles_dir / HISTORY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{bundles_dir / HISTORY}: unreadable ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
        raise BundleError(f"{bundles_dir / HISTORY}: expected a JSON list of versions")
    return data


def _write_history(bundles_dir: Path, versions: list[str]) -> None:
    tmp = bundles_dir / (HISTORY + ".tmp")
    tmp.write_text(json.dumps(versions, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, bundles_dir / HISTORY)


def current_version(bundles_dir: str | Path) -> str | None:
    """The active version (the ``current`` link's target), or None when nothing is installed."""
    link = Path(bundles_dir) / CURRENT
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def _point_current(bundles_dir: Path, version: str) -> None:
    """Swap ``current`` atomically: a new symlink renamed over the old one (readers see old or new)."""
    tmp = bundles_dir / f".{CURRENT}.{os.getpid()}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(Path("bundles") / version, tmp)
    os.replace(tmp, bundles_dir / CURRENT)


def install_bundle(source: str | Path, bundles_dir: str | Path, key: bytes, *,
                   model_version: str | None = None) -> VerifiedBundle:
    """Verify ``source`` with the device key, copy it under ``bundles/<version>/`` and make it current.

    Refuses (BundleError, nothing changed) a bundle that does not verify, or a version already installed
    with different content (versions are immutable: re-fitting needs a new version name).
    """
    bundles_dir = Path(bundles_dir)
    verified = read_bundle(source, key, model_version=model_version)
    version = verified.version
    src = Path(source) / BUNDLE_FILE if Path(source).is_dir() else Path(source)
    (bundles_dir / "bundles").mkdir(parents=True, exist_ok=True)
    target = bundles_dir / "bundles" / version
    if target.exists():
        if (target / BUNDLE_FILE).read_bytes() != src.read_bytes():
            raise BundleError(f"{src}: version {version!r} is already installed with different content; "
                              f"give the new fit another version")
    else:
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=bundles_dir / "bundles"))
        try:
            shutil.copyfile(src, staging / BUNDLE_FILE)
            os.rename(staging, target)  # atomic: a half-copied bundle never has its final name
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    history = [v for v in _history(bundles_dir) if v != version] + [version]
    _write_history(bundles_dir, history)
    _point_current(bundles_dir, version)
    return verified


def list_bundles(bundles_dir: str | Path) -> list[InstalledBundle]:
    """Installed bundles in install order (unverified metadata: for display only)."""
    bundles_dir = Path(bundles_dir)
    active = current_version(bundles_dir)
    out = []
    for version in _history(bundles_dir):
        path = bundles_dir / "bundles" / version / BUNDLE_FILE
        try:
            payload = json.loads(path.read_text(encoding="utf-8")).get("payload", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            payload = {}
        m = payload.get("map") if isinstance(payload.get("map"), dict) else {}
        out.append(InstalledBundle(version, path, version == active, payload.get("created_utc"),
                                   payload.get("created_by"), m.get("model_version"), payload.get("method")))
    return out


def rollback(bundles_dir: str | Path, key: bytes, *, to: str | None = None,
             model_version: str | None = None) -> VerifiedBundle:
    """Make an earlier bundle current: ``to``, or the one installed just before the active one.

    The target is verified again before the switch (a bundle can be tampered with on disk after install).
    """
    bundles_dir = Path(bundles_dir)
    history = _history(bundles_dir)
    active = current_version(bundles_dir)
    if to is None:
        if active not in history:
            raise BundleError(f"{bundles_dir}: no current bundle to roll back from")
        i = history.index(active)
        if i == 0:
            raise BundleError(f"{bundles_dir}: {active!r} is the oldest installed bundle; nothing to roll back to")
        to = history[i - 1]
    elif to not in history:
        raise BundleError(f"{bundles_dir}: version {to!r} is not installed (installed: {history})")
    verified = read_bundle(bundles_dir / "bundles" / to, key, model_version=model_version)
    _point_current(bundles_dir, to)
    return verified


# -------------------------------------------------------------------------------------------------- CLI
def _common(parser: argparse.ArgumentParser, key: bool = True) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_BUNDLES_DIR,
                        help=f"calibration folder holding bundles/ and current (default {DEFAULT_BUNDLES_DIR})")
    if key:
        parser.add_argument("--key", type=Path, default=DEFAULT_KEY_FILE,
                            help=f"device key file, mode 0600 (default {DEFAULT_KEY_FILE})")
        parser.add_argument("--model-version", default=None,
                            help="refuse a bundle made for another model (the engines' model version)")


def add_keygen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key", type=Path, default=DEFAULT_KEY_FILE, help="where to write the new key (0600)")


def run_keygen(args: argparse.Namespace) -> int:
    try:
        path = generate_key(args.key)
    except FileExistsError:
        print(f"neopain calibrate keygen: {args.key} exists; refusing to replace a device key", file=sys.stderr)
        return 2
    print(f"wrote {path} (key id {key_id(read_key(path))})")
    return 0


def add_install_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="bundle.json (or a folder holding one) to install")
    _common(parser)


def run_install(args: argparse.Namespace) -> int:
    try:
        v = install_bundle(args.bundle, args.dir, read_key(args.key), model_version=args.model_version)
    except (BundleError, OSError) as exc:
        print(f"neopain calibrate install: refused: {exc}", file=sys.stderr)
        return 2
    print(f"installed {v.version} (model {v.map.model_version}) as {args.dir / CURRENT}; "
          f"send SIGHUP to the daemon (systemctl reload neopain) to apply it")
    return 0


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser, key=False)


def run_list(args: argparse.Namespace) -> int:
    try:
        bundles = list_bundles(args.dir)
    except BundleError as exc:
        print(f"neopain calibrate list: {exc}", file=sys.stderr)
        return 2
    if not bundles:
        print(f"no bundles installed in {args.dir}")
    for b in bundles:
        print(f"{'*' if b.current else ' '} {b.version:30s} {b.method or '-':9s} model {b.model_version or '-'}  "
              f"{b.created_utc or '-'}  {b.created_by or '-'}")
    return 0


def add_rollback_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--to", default=None, help="version to activate (default: the one installed before)")


def run_rollback(args: argparse.Namespace) -> int:
    try:
        v = rollback(args.dir, read_key(args.key), to=args.to, model_version=args.model_version)
    except BundleError as exc:
        print(f"neopain calibrate rollback: refused: {exc}", file=sys.stderr)
        return 2
    print(f"current is now {v.version}; send SIGHUP to the daemon (systemctl reload neopain) to apply it")
    return 0
