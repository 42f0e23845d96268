"""The calibration stage: the site's monotone map from the model's raw NIPS to the published NIPS.

Why a map after the model: nurses at one unit score systematically differently from the raters the model
was trained on; a monotone map fitted on local (raw score, nurse rating) pairs fixes that bias without
retraining and without changing the ranking of scores. Without an installed bundle the stage is the
identity and every score says ``calibration_version: "uncalibrated"`` (plus the quality flag
``uncalibrated``), so nobody mistakes a factory model for a site-calibrated one.

Map payload (format version 1): what a signed bundle carries as its ``map`` (signing, the fit summary and
who/when are :mod:`appliance.scoring.bundles` and ``calibration/bundle.py``; they are not checked here)::

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

Loading (:mod:`appliance.scoring.calibration_stage`): a folder holding ``bundle.json`` (or that file itself) is a
signed bundle (:mod:`appliance.scoring.bundles`); it is verified with the device key (``key_file``) and its model version must match the engines'.
With ``require_signature`` (the daemon sets it once a device key is configured), a plain unsigned
``map.json`` is refused too. Refusals are :class:`CalibrationError` like any invalid file, so the stage keeps
the previous map on SIGHUP.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.vocabulary import NIPS_MAX

log = logging.getLogger(__name__)

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
        return CalibrationMap(UNCALIBRATED, (0.0, float(NIPS_MAX)), (0.0, float(NIPS_MAX)))

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
