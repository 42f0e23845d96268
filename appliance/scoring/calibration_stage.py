"""The calibration stage of the scoring graph: which map is active, loading it, and reloading it on SIGHUP.

Why a stage apart from the map: the map (:mod:`appliance.scoring.calibration_map`) is a value; the stage
owns the file on disk (a plain ``map.json`` or a signed ``bundle.json``, :mod:`appliance.scoring.bundles`), the
rule that a refused reload keeps the previous map, and the lock that gives each score exactly one map.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from appliance.scoring.bundles import read_key, verify_bundle
from appliance.scoring.calibration_map import (BUNDLE_FILE, BUNDLE_FORMAT, MAP_FILE, CalibrationError, CalibrationMap,
                                               parse_calibration)

log = logging.getLogger(__name__)


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
        return verify_bundle(payload, read_key(key_file), model_version=model_version, where=str(file)).map
    if require_signature:
        raise CalibrationError(f"{file}: unsigned calibration map refused (install a signed bundle with "
                               f"`neopain calibrate install`)")
    cal = parse_calibration(payload, where=str(file))
    if cal.model_version is not None and model_version is not None and cal.model_version != model_version:
        raise CalibrationError(f"{file}: model_version: map made for model {cal.model_version!r}, "
                               f"the engines run {model_version!r}")
    return cal


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
