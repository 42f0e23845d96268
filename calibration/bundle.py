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
     "payload": {"map": {<appliance.scoring.calibration_map payload: version, model_version, x, y>},
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
import json
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from appliance.scoring.bundles import (BUNDLE_FILE, CURRENT, FORMAT, FORMAT_VERSION, BundleError, VerifiedBundle,
                                      check_version, key_id, read_bundle, read_key, sign)
from appliance.scoring.calibration_map import parse_calibration

HISTORY = "history.json"
DEFAULT_BUNDLES_DIR = Path("/var/lib/neopain/calibration")
DEFAULT_KEY_FILE = Path("/etc/neopain/calibration.key")
KEY_BYTES = 32


# ------------------------------------------------------------------------------------------------- keys
def generate_key(path: str | Path) -> Path:
    """Write a new random device key (hex text, mode 0600); refuses to overwrite an existing key."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never briefly world-readable
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return path


# ------------------------------------------------------------------------------------------- sign/verify
def make_bundle(*, version: str, model_version: str, x: list[float], y: list[float], key: bytes,
                method: str, fit: dict[str, Any] | None = None, created_by: str | None = None,
                created_utc: str | None = None) -> dict[str, Any]:
    """A signed bundle dict (validated: the map goes through the appliance's own parser first)."""
    check_version(version, "bundle")
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
