"""The calibration stage: the site's monotone map from the model's raw NIPS to the published NIPS.

Why a map after the model: nurses at one unit score systematically differently from the raters the model
was trained on; a monotone map fitted on local (raw score, nurse rating) pairs fixes that bias without
retraining and without changing the ranking of scores. Without an installed bundle the stage is the
identity and every score says ``calibration_version: "uncalibrated"`` (plus the quality flag
``uncalibrated``), so nobody mistakes a factory model for a site-calibrated one.

Bundle payload (placeholder, version 1). This is the *payload* the calibration issue will wrap in a signed
bundle; signing, the fit summary and who/when belong to ``calibration/bundle.py`` and are not checked here::

    {
      "format": "neopain-calibration-map",
      "format_version": 1,
      "version": "site-a-2024-05-01",     # shown in every score as calibration_version
      "model_version": "abc123",          # optional: refuse the map for any other model
      "x": [0.0, 2.0, 7.0],               # raw model NIPS knots, strictly increasing, within [0, 7]
      "y": [0.0, 3.0, 7.0]                # published NIPS at the knots, non-decreasing, within [0, 7]
    }

Between knots the map is linear; outside them it is constant (the end values); the result is clipped to
[0, 7]. ``[calibration] bundle`` names either that JSON file or a folder holding ``map.json`` (the installed
bundle's layout, ``/var/lib/neopain/calibration/current/map.json``). A configured path that does not exist
means "not installed yet" (identity, logged); a file that exists but is invalid is an error: at start the
daemon refuses to run, on SIGHUP the previous map stays active.

Signed bundles (``calibration/bundle.py``): a folder holding ``bundle.json`` (or that file itself) is a signed
bundle; it is verified with the device key (``key_file``) and its model version must match the engines'.
With ``require_signature`` (the daemon sets it once a device key is configured), a plain unsigned
``map.json`` is refused too. Refusals are :class:`CalibrationError` like any invalid file, so the stage keeps
the previous map on SIGHUP.
"""
from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NIPS_MAX = 7.0
FORMAT = "neopain-calibration-map"
FORMAT_VERSION = 1
UNCALIBRATED = "uncalibrated"
MAP_FILE = "map.json"
BUNDLE_FILE = "bundle.json"  # a signed bundle (calibration/bundle.py); preferred over map.json in a folder
BUNDLE_FORMAT = "neopain-calibration-bundle"


class CalibrationError(ValueError):
    """A calibration payload that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class CalibrationMap:
    """A monotone piecewise-linear map on [0, 7]; ``identity()`` when no site calibration is installed."""

    version: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    model_version: str | None = None
    source: str | None = None

    @staticmethod
    def identity() -> "CalibrationMap":
        return CalibrationMap(UNCALIBRATED, (0.0, NIPS_MAX), (0.0, NIPS_MAX))

    @property
    def calibrated(self) -> bool:
        return self.version != UNCALIBRATED

    def apply(self, raw_nips: float) -> float:
        """The published NIPS for a raw model output (clipped to [0, 7] on both sides)."""
        if not math.isfinite(raw_nips):
            raise ValueError(f"calibration: raw NIPS must be finite, got {raw_nips!r}")
        raw = min(max(float(raw_nips), 0.0), NIPS_MAX)
        return float(np.clip(np.interp(raw, self.x, self.y), 0.0, NIPS_MAX))


def _numbers(name: str, value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise CalibrationError(f"{where}: {name}: expected a list of at least 2 numbers")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CalibrationError(f"{where}: {name}[{i}]: expected a finite number, got {v!r}")
        if not 0.0 <= v <= NIPS_MAX:
            raise CalibrationError(f"{where}: {name}[{i}]: {v!r} is outside [0, {NIPS_MAX:g}]")
        out.append(float(v))
    return tuple(out)


def parse_calibration(payload: Any, *, where: str = "<calibration>") -> CalibrationMap:
    """Validate a decoded payload (see module docstring) into a :class:`CalibrationMap`."""
    if not isinstance(payload, dict):
        raise CalibrationError(f"{where}: expected a JSON object, got {type(payload).__name__}")
    known = {"format", "format_version", "version", "model_version", "x", "y"}
    unknown = sorted(set(payload) - known)
    if unknown:
        raise CalibrationError(f"{where}: unknown key(s) {unknown} (known: {sorted(known)})")
    if payload.get("format") != FORMAT:
        raise CalibrationError(f"{where}: format: expected {FORMAT!r}, got {payload.get('format')!r}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(f"{where}: format_version: expected {FORMAT_VERSION}, got "
                               f"{payload.get('format_version')!r}")
    version = payload.get("version")
    if not isinstance(version, str) or not version.strip() or len(version) > 200 or version == UNCALIBRATED:
        raise CalibrationError(f"{where}: version: expected a non-empty string (not {UNCALIBRATED!r}), "
                               f"got {version!r}")
    model_version = payload.get("model_version")
    if model_version is not None and (not isinstance(model_version, str) or not model_version):
        raise CalibrationError(f"{where}: model_version: expected a non-empty string, got {model_version!r}")
    x = _numbers("x", payload.get("x"), where)
    y = _numbers("y", payload.get("y"), where)
    if len(x) != len(y):
        raise CalibrationError(f"{where}: x and y: {len(x)} knots but {len(y)} values")
    for i in range(1, len(x)):
        if not x[i] > x[i - 1]:
            raise CalibrationError(f"{where}: x[{i}]: knots must be strictly increasing ({x[i - 1]} then {x[i]})")
        if y[i] < y[i - 1]:
            raise CalibrationError(f"{where}: y[{i}]: the map must be monotone (non-decreasing): "
                                   f"{y[i - 1]} then {y[i]}")
    return CalibrationMap(version, x, y, model_version, where)


def map_file(path: str | Path) -> Path:
    """The JSON file of a configured bundle path (the file itself, or ``map.json`` in a folder)."""
    p = Path(path)
    if p.is_dir():
        return p / BUNDLE_FILE if (p / BUNDLE_FILE).exists() else p / MAP_FILE
    return p


def load_calibration(path: str | Path | None, *, model_version: str | None = None,
                     key_file: str | Path | None = None, require_signature: bool = False) -> CalibrationMap:
    """The map at ``path``; identity when ``path`` is empty/None or does not exist (not installed).

    Raises :class:`CalibrationError` for an unreadable or invalid file, or one made for another model; for a
    signed bundle that does not verify with ``key_file``; and, with ``require_signature``, for an unsigned map.
    """
    if path is None or str(path) == "":
        return CalibrationMap.identity()
    file = map_file(path)
    if not file.exists():
        log.warning("calibration: no bundle at %s: publishing uncalibrated scores", path)
        return CalibrationMap.identity()
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"{file}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{file}: not valid JSON: line {exc.lineno}: {exc.msg}") from None
    signed = isinstance(payload, dict) and ("signature" in payload or payload.get("format") == BUNDLE_FORMAT)
    if signed or file.name == BUNDLE_FILE:
        if key_file is None:
            raise CalibrationError(f"{file}: a signed bundle, but no device key is configured to verify it")
        from calibration.bundle import read_key, verify_bundle  # lazy: the daemon without bundles needs none

        return verify_bundle(payload, read_key(key_file), model_version=model_version, where=str(file)).map
    if require_signature:
        raise CalibrationError(f"{file}: unsigned calibration map refused (install a signed bundle with "
                               f"`neopain calibrate install`)")
    cal = parse_calibration(payload, where=str(file))
    if cal.model_version is not None and model_version is not None and cal.model_version != model_version:
        raise CalibrationError(f"{file}: model_version: map made for model {cal.model_version!r}, "
                               f"the engines run {model_version!r}")
    return cal


def write_calibration(path: str | Path, *, version: str, x: list[float], y: list[float],
                      model_version: str | None = None) -> Path:
    """Write a payload file (validated first); for tests, the demo and the calibration tools."""
    payload: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
                               "x": list(x), "y": list(y)}
    if model_version is not None:
        payload["model_version"] = model_version
    parse_calibration(payload, where=str(path))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


class CalibrationStage:
    """Holds the active map; :meth:`request_reload` (signal-safe) makes the scoring thread reload it.

    A reload that fails keeps the previous map (and says so in the log and in :attr:`last_error`): a typo in
    a new file must not turn a calibrated device into an uncalibrated one behind the nurses' backs.
    """

    def __init__(self, path: str | Path | None, *, model_version: str | None = None,
                 key_file: str | Path | None = None, require_signature: bool = False) -> None:
        self.path = path
        self.model_version = model_version
        self.key_file = key_file
        self.require_signature = require_signature
        self._lock = threading.Lock()
        self._reload = threading.Event()
        self.current = self._load()
        self.reloads = 0
        self.last_error: str | None = None

    def request_reload(self) -> None:
        """Ask for a reload at the next cycle (safe to call from a signal handler)."""
        self._reload.set()

    def reload_if_requested(self) -> bool:
        """Run a pending reload; True when a new map became active."""
        if not self._reload.is_set():
            return False
        self._reload.clear()
        return self.reload()

    def reload(self) -> bool:
        """Reload now; True on success (the new map is active), False when the previous map stays."""
        try:
            new = self._load()
        except CalibrationError as exc:
            self.last_error = str(exc)
            log.error("calibration: reload refused, keeping %s: %s", self.current.version, exc)
            return False
        with self._lock:
            old, self.current = self.current, new
            self.reloads += 1
            self.last_error = None
        log.info("calibration: reloaded %s (was %s)", new.version, old.version)
        return True

    def _load(self) -> CalibrationMap:
        return load_calibration(self.path, model_version=self.model_version, key_file=self.key_file,
                                require_signature=self.require_signature)

    def apply(self, raw_nips: float) -> tuple[float, CalibrationMap]:
        """(published NIPS, the map used): one map per score even if a reload lands meanwhile."""
        with self._lock:
            cal = self.current
        return cal.apply(raw_nips), cal
