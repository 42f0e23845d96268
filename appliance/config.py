"""The appliance's TOML configuration: typed, bounded, documented, and strict about secrets.

Why this shape: the device runs unattended at a cot side, so a typo must stop it at `neopain config check`
(or at start, with systemd showing the one error line) rather than silently falling back to a default.
Every field is a dataclass field whose metadata carries its bounds and its documentation; the same metadata
validates the file, renders the shipped ``systemd/appliance.toml`` and answers "what does this key do".

Secrets (the MQTT password, the TLS client key) are never read from the main file, which is world-readable
and ends up in backups and bug reports: they come from a systemd credential (``LoadCredential=`` puts them
in ``$CREDENTIALS_DIRECTORY``) or from a file that others cannot read.

``tomllib`` reports no line numbers for keys, so :func:`key_lines` scans the text itself (tracking tables,
dotted keys, strings and multi-line values) to point every error at ``file:line``.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import os
import re
import stat
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from appliance.mqtt import topics
from appliance.textcut import cut
from models.configs import CONFIGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: JetPack 6's python3 (the device's venv); tomli is the library tomllib was made from
    import tomli as tomllib

#: Where systemd (``ConfigurationDirectory=neopain``) and the CLI look by default.
DEFAULT_CONFIG_PATH = Path("/etc/neopain/appliance.toml")

# MQTT topic levels and systemd credential names: no '/', '+', '#', spaces or control characters.
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_BACKENDS = ("tensorrt", "onnxruntime", "torch")
_MODEL_CONFIGS = tuple(sorted(CONFIGS))  # models.configs is plain dataclasses: a config check loads no torch
MODEL_CONFIG_AUTO = "auto"  # scoring.model_config: the size the exported model's manifest names
_BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)

# Keys that must never be in the main file, with what to use instead.
_FORBIDDEN_SECRETS = {
    ("mqtt", "password"): "secrets are not read from the main config file: put the password in a file readable "
    "only by the service and set mqtt.password_file, or load the systemd credential 'mqtt-password'",
    ("mqtt", "tls_key"): "secrets are not read from the main config file: set mqtt.tls_key_file to a key file "
    "readable only by the service, or load the systemd credential 'mqtt-tls-key'",
}


class ConfigError(ValueError):
    """One configuration problem, printed as one line: ``file:line: section.key: message``."""

    def __init__(self, message: str, *, file: Path | str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.key = key
        self.line = line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = _shown(self.file or "<config>")
        if self.line is not None:
            where += f":{self.line}"
        prefix = f"{where}: "
        if self.key:
            prefix += f"{_shown(self.key, 120)}: "  # an unknown key can be any length
        return (prefix + self.message).replace("\n", " ")


def _shown(text: str, limit: int = 256) -> str:
    """A path or key as it is when of a usual length, else cut with its length (``appliance/textcut.py``)."""
    return text if len(text) <= limit else cut(text, limit)


def spec(default: Any, doc: str, *, min: float | None = None, max: float | None = None,
         choices: tuple[Any, ...] | None = None, pattern: str | None = None, unique: bool = False,
         min_items: int | None = None, path: bool = False, host: bool = False) -> Any:
    """A dataclass field with its validation and documentation in ``metadata``.

    ``min``/``max`` are inclusive bounds on numbers; ``choices`` restricts a value (or each list item);
    ``pattern`` is a regex a string must match; ``path`` marks strings that are file paths (resolved
    against the config file's folder when relative; empty means "not set"); ``host`` marks a network host:
    an IP address or an RFC 1123 host name. Every number must be finite (NaN and ±inf compare false with
    every bound, so they are refused before any bound is checked).
    """
    meta = {"doc": doc, "min": min, "max": max, "choices": choices, "pattern": pattern, "unique": unique,
            "min_items": min_items, "path": path, "host": host}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceSection:
    """Who this box is: the MQTT topics are neopain/<site>/<bed>/... and every message carries the id."""

    id: str = spec("neopain-0001", "Device identifier carried in every message (serial number or asset tag).",
                   pattern=_NAME_RE)
    site: str = spec("site", "Site (hospital/unit) topic level.", pattern=_NAME_RE)
    bed: str = spec("bed-01", "Bed topic level.", pattern=_NAME_RE)


@dataclass(frozen=True)
class CameraSection:
    """The face camera (see appliance/sources/camera.py)."""

    enabled: bool = spec(True, "Use the camera; false runs without the video modality.")
    source: int | str = spec("/dev/video0", "Device index (0), /dev/videoN path, GStreamer pipeline ending in "
                             "appsink, or a video file (simulated bed).", min=0)
    kind: str = spec("auto", "How to open source; auto guesses from its form.",
                     choices=("auto", "device", "gstreamer", "file"))
    fps: float = spec(30.0, "Frame rate requested from the device (files: playback rate).", min=1.0, max=120.0)
    width: int = spec(1280, "Frame width requested from the device, pixels.", min=16, max=7680)
    height: int = spec(720, "Frame height requested from the device, pixels.", min=16, max=4320)
    reopen_after_s: float = spec(3.0, "Reopen the camera after this long without a frame, seconds.",
                                 min=0.5, max=120.0)
    face_crop_size: int = spec(224, "Side of the square face crop fed to the video network, pixels (must "
                               "match the model: 224 full, 64 tiny).", min=32, max=1024)
    loop: bool = spec(False, "Replay a video-file source from its start when it ends (simulated bed only).")
    face_roi: list[int] = spec([], "Fixed face region [x, y, width, height] in pixels, for a camera mounted over "
                               "the cot framing the face: the crop is always this region, while the face detector "
                               "finds a face inside it; empty = detect and track the face in the whole frame. A "
                               "region beyond the camera's frame is refused at the first frame.", min=0, max=7680)
    face_detector: str = spec("centerface", "Face detector: centerface (a DNN through ONNX Runtime; finds faces "
                              "turned, small, dim or half covered) or haar (OpenCV's frontal cascade). When the "
                              "chosen one cannot load, the other runs and the journal says why.",
                              choices=("centerface", "haar"))


@dataclass(frozen=True)
class MicrophoneSection:
    """The cry microphone (ALSA)."""

    enabled: bool = spec(True, "Use the microphone; false runs without the audio modality.")
    device: str = spec("default", "ALSA PCM name (arecord -L), e.g. default, hw:1,0, plughw:CARD=Mic.")
    rate: int = spec(16000, "Capture rate, Hz; the audio networks are trained at 16 kHz.", choices=(16000,))
    period_frames: int = spec(1024, "ALSA period size, frames per read.", min=64, max=16384)
    pace_realtime: bool = spec(False, "Pace reads to real time: only for a replayed file through ALSA's file "
                               "plugin (simulated bed), which returns data as fast as it is read.")


@dataclass(frozen=True)
class MonitorSection:
    """The patient monitor's serial export (HR, SpO2)."""

    enabled: bool = spec(True, "Read the monitor; false runs without the vitals modality.")
    port: str = spec("/dev/ttyUSB0", "Serial device of the monitor's data port.")
    baud: int = spec(9600, "Serial speed, baud.", choices=_BAUDS)
    protocol: str = spec("auto", "Monitor protocol; auto tries each on connect.",
                         choices=("masimo", "intellivue", "auto"))


@dataclass(frozen=True)
class ScoringSection:
    """The scoring loop: cadence, freshness and the engines."""

    cadence_s: float = spec(2.0, "Score every this many seconds.", min=0.25, max=60.0)
    max_age_video_s: float = spec(1.0, "A video window whose newest frame is older than this is not used, s.",
                                  min=0.05, max=60.0)
    max_age_audio_s: float = spec(1.0, "An audio window whose newest sample is older than this is not used, s.",
                                  min=0.05, max=60.0)
    max_age_vitals_s: float = spec(5.0, "A vitals window whose newest reading is older than this is not used, s.",
                                   min=0.5, max=300.0)
    min_fill_video: float = spec(0.75, "Video is scored only when camera frames fill at least this share of its "
                                 "window (16 frames over 2 s), e.g. not in the first second after start.",
                                 min=0.0, max=1.0)
    min_fill_audio: float = spec(0.8, "Audio is scored only when captured samples fill at least this share of its "
                                 "window (the cry, or the last 3 s).", min=0.0, max=1.0)
    min_fill_vitals: float = spec(0.5, "Vitals are scored only when monitor readings (each held 2 s) or heart "
                                  "beats cover at least this share of the 30 s vitals window.", min=0.0, max=1.0)
    min_face_px: int = spec(32, "Video is scored only when the face (shorter side of the detected box or the fixed "
                            "ROI) spans at least this many of the camera's own pixels, before resizing to the "
                            "crop size: an upscaled tiny or distant face is blur, not a face.", min=1, max=4096)
    min_face_contrast: float = spec(4.0, "Video is scored only when its face crops have at least this grey-level "
                                    "standard deviation (0-255): below it the picture is flat (lens covered, blank "
                                    "or uniform frame).", min=0.0, max=128.0)
    min_face_detail: float = spec(2.0, "Video is scored only when its face crops, seen at 64x64, have at least this "
                                  "much fine detail (standard deviation of the Laplacian, grey levels): below it "
                                  "there is no texture (a smooth blur or gradient).", min=0.0, max=255.0)
    modality_lost_after_s: float = spec(10.0, "Health reports a modality as lost (state degraded, \"scoring without "
                                        "...\") only after it has been missing from the scored windows this long; "
                                        "each score still uses what its own window has. 0 = at once. Keeps a cry "
                                        "that comes and goes from flapping the bed's health, s.", min=0.0, max=600.0)
    modality_back_after_s: float = spec(10.0, "Health reports a lost modality as back only after it has been present "
                                        "this long without a gap, s.", min=0.0, max=600.0)
    model_config: str = spec(MODEL_CONFIG_AUTO, "Network size of the model in model_dir: auto takes it from the "
                             "model's manifest (the one source of truth); tiny or full pin it, and a model of "
                             "another size is then refused (the daemon exits 3) rather than run.",
                             choices=(MODEL_CONFIG_AUTO, *_MODEL_CONFIGS))
    backends: list[str] = spec(list(_BACKENDS), "Engine backends to try, first that loads wins.",
                               choices=_BACKENDS, unique=True, min_items=1)
    precision: str = spec("fp16", "Engine precision: fp32 everywhere; fp16 = TensorRT FP16, PyTorch FP16 on CUDA, "
                          "ONNX Runtime FP32; int8 = TensorRT INT8 and ONNX Runtime INT8 from the model's QDQ parts "
                          "(neopain export --int8; without them FP32, logged), PyTorch as at fp16.",
                          choices=("fp32", "fp16", "int8"))
    model_dir: str = spec("/opt/neopain/models", "Folder with the exported ONNX models and weights.", path=True)
    engine_cache_dir: str = spec("/var/cache/neopain/engines", "Built engines (systemd CacheDirectory=neopain).",
                                 path=True)

    def model_size_refusal(self, held: str) -> str | None:
        """Why a model of size ``held`` (its manifest's ``config_name``) must not run here, or None.

        The manifest is the source of truth: ``auto`` runs whatever it names. A pinned size is a deliberate
        statement ("this bed runs the full model"), so a model that contradicts it is refused, not run.
        """
        if self.model_config in (MODEL_CONFIG_AUTO, held):
            return None
        return (f"scoring.model_config is {self.model_config!r} but {self.model_dir} holds a {held!r} model "
                f"(set it to {MODEL_CONFIG_AUTO!r} to run the size the model's manifest names)")


@dataclass(frozen=True)
class MqttSection:
    """The broker connection. Secrets come from files or systemd credentials, never from this file."""

    host: str = spec("127.0.0.1", "Broker host: an IP address or a host name (RFC 1123: dot-separated labels of "
                     "1-63 letters, digits and hyphens, 253 characters in all).", host=True)
    port: int = spec(1883, "Broker port (8883 is the usual TLS port).", min=1, max=65535)
    client_id: str = spec("", "MQTT client id; empty uses device.id.")
    tls_ca_file: str = spec("", "CA certificate (PEM) that signed the broker's certificate; non-empty turns on "
                            "TLS. Empty: plain TCP.", path=True)
    tls_cert_file: str = spec("", "Client certificate (PEM) for mutual TLS; empty: none.", path=True)
    tls_key_file: str = spec("", "Client key (PEM) if not given as a systemd credential; must not be readable "
                             "by others.", path=True)
    tls_key_credential: str = spec("mqtt-tls-key", "systemd credential holding the client key (used when "
                                   "present in $CREDENTIALS_DIRECTORY).", pattern=_NAME_RE)
    username: str = spec("", "Broker user name; empty: anonymous.")
    password_file: str = spec("", "File holding the broker password if not given as a systemd credential; "
                              "must not be readable by others.", path=True)
    password_credential: str = spec("mqtt-password", "systemd credential holding the broker password (used "
                                    "when present in $CREDENTIALS_DIRECTORY).", pattern=_NAME_RE)
    keepalive_s: int = spec(30, "MQTT keepalive, seconds.", min=5, max=3600)
    qos: int = spec(1, "QoS of score messages: 1 (the outbox row is released on the broker's PUBACK) or 2 (exactly "
                    "once to the broker; released on PUBCOMP). At least 1 so that the outbox can wait for the "
                    "broker.", min=1, max=2)
    message_expiry_s: int = spec(10, "MQTT 5 message expiry of a score: a stale score is dropped, not delivered "
                                 "late as current, seconds.", min=1, max=3600)
    health_interval_s: float = spec(30.0, "Publish the retained health message every this many seconds.",
                                    min=1.0, max=3600.0)
    publish_vitals: bool = spec(False, "Also publish HR/SpO2 as read, 1 Hz, on <prefix>/vitals.")
    confirm_grace_s: float = spec(30.0, "A score that no central station has confirmed storing this long after the "
                                  "broker took it counts as unconfirmed (health, journal; see docs/mqtt.md).",
                                  min=1.0, max=3600.0)
    command_key_file: str = spec("", "Central station key (hex, 0600) if not given as a systemd credential: when set, "
                                 "commands must carry command_id, sent_utc and an HMAC-SHA256 made with it (see "
                                 "appliance/mqtt/messages.py). Empty: the broker ACL alone says who may command.", path=True)
    command_key_credential: str = spec("mqtt-command-key", "systemd credential holding the station key (used when "
                                       "present in $CREDENTIALS_DIRECTORY).", pattern=_NAME_RE)


@dataclass(frozen=True)
class OutboxSection:
    """The disk outbox: every score is written here before publishing and removed on PUBACK."""

    path: str = spec("/var/lib/neopain/outbox.sqlite3", "Outbox database (systemd StateDirectory=neopain).",
                     path=True)
    max_rows: int = spec(100000, "Most scores kept while the broker is away; the oldest are dropped (and "
                         "counted) beyond this.", min=1, max=10_000_000)


@dataclass(frozen=True)
class CalibrationSection:
    """The site calibration map from model output to NIPS."""

    bundle: str = spec("/var/lib/neopain/calibration/current", "Installed site calibration bundle (see calibration/).",
                       path=True)
    key_file: str = spec("", "Device key that signs calibration bundles (0600, `neopain calibrate keygen`); when set, "
                         "unsigned or foreign bundles are refused. Empty: plain maps are accepted.", path=True)
    sessions_db: str = spec("/var/lib/neopain/calibration/sessions.sqlite", "Where calibration sessions (raw score, "
                            "nurse rating pairs) are stored on the device.", path=True)


@dataclass(frozen=True)
class DebugSection:
    """Diagnostics. Raw video and audio never leave the device, even when saved."""

    save_raw_media: bool = spec(False, "Save raw frames and audio on the device for debugging (patient data: "
                                "leave false in clinical use).")
    log_level: str = spec("info", "Lowest level logged.", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    """The whole appliance configuration; ``source`` is the file it was read from (not a TOML key)."""

    device: DeviceSection = field(default_factory=DeviceSection)
    camera: CameraSection = field(default_factory=CameraSection)
    microphone: MicrophoneSection = field(default_factory=MicrophoneSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    scoring: ScoringSection = field(default_factory=ScoringSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    outbox: OutboxSection = field(default_factory=OutboxSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    debug: DebugSection = field(default_factory=DebugSection)
    source: Path | None = field(default=None, compare=False, metadata={"not_toml": True})

    @property
    def topic_prefix(self) -> str:
        """``neopain/<site>/<bed>``: every topic of this bed lives under it."""
        return topics.bed_prefix(self.device.site, self.device.bed)

    @property
    def mqtt_client_id(self) -> str:
        return self.mqtt.client_id or self.device.id


def sections() -> list[dataclasses.Field]:
    """The TOML sections of :class:`Config`, in file order."""
    return [f for f in dataclasses.fields(Config) if not f.metadata.get("not_toml")]


def default(section: str, key: str) -> Any:
    """The spec's default of ``[section] key``: what a stage's own config dataclass uses as its default, so
    that a stage built in a test or a tool behaves like the daemon built from an empty config file (one set
    of defaults, the spec's; ``tests/appliance/test_wiring.py`` checks every mapped key)."""
    for s in sections():
        if s.name == section:
            for f in dataclasses.fields(s.default_factory):  # type: ignore[arg-type]
                if f.name == key:
                    if f.default is not dataclasses.MISSING:
                        return f.default
                    return f.default_factory()  # type: ignore[misc]
            raise KeyError(f"[{section}] has no key {key!r}")
    raise KeyError(f"no config section [{section}]")


# --------------------------------------------------------------------------------------------------------------
# Line numbers: tomllib gives none for keys, so find them in the text.


def _strip_value(text: str, state: dict[str, Any]) -> None:
    """Advance ``state`` (open multi-line string delimiter, bracket depth) over one line of a TOML value."""
    i = 0
    n = len(text)
    while i < n:
        ml = state["ml"]
        if ml:
            if ml == '"""' and text[i] == "\\":
                i += 2
                continue
            if text.startswith(ml, i):
                state["ml"] = None
                i += 3
                continue
            i += 1
            continue
        c = text[i]
        if c == "#":
            return
        if text.startswith('"""', i) or text.startswith("'''", i):
            state["ml"] = text[i:i + 3]
            i += 3
            continue
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if c == "'":
            end = text.find("'", i + 1)
            i = n if end < 0 else end + 1
            continue
        if c in "[{":
            state["depth"] += 1
        elif c in "]}":
            state["depth"] -= 1
        i += 1


def _find_unquoted(text: str, char: str) -> int:
    """Index of the first ``char`` outside quotes in ``text``, or -1."""
    i = 0
    while i < len(text):
        c = text[i]
        if c == char:
            return i
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                return -1
            i = end
        i += 1
    return -1


def _flatten_single(d: Mapping[str, Any]) -> tuple[str, ...]:
    """The one key path of a dict like {"a": {"b": 0}} -> ("a", "b")."""
    path: list[str] = []
    while isinstance(d, Mapping) and len(d) == 1:
        (k, v), = d.items()
        path.append(k)
        d = v
    return tuple(path)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every table header and key path in TOML ``text`` to its 1-based line.

    Key spellings (bare, quoted, dotted) are decoded by tomllib itself on the key fragment, so ``"port"``,
    ``port`` and ``mqtt.port`` under ``[ ]`` all land on the same path. Lines inside multi-line strings and
    arrays are skipped. Keys inside inline tables are not listed (errors fall back to the enclosing key).
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    state: dict[str, Any] = {"ml": None, "depth": 0}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if state["ml"] or state["depth"] > 0:
            _strip_value(raw, state)
            continue
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            array = s.startswith("[[")
            close = _find_unquoted(s, "]")
            inner = s[2 if array else 1:close] if close > 0 else ""
            try:
                table = _flatten_single(tomllib.loads(f"[{inner}]"))
            except tomllib.TOMLDecodeError:
                continue  # tomllib reports the syntax error with its own line number
            lines.setdefault(table, lineno)
            continue
        eq = _find_unquoted(s, "=")
        if eq <= 0:
            continue
        try:
            rel = _flatten_single(tomllib.loads(s[:eq] + "= 0"))
        except tomllib.TOMLDecodeError:
            continue
        for k in range(1, len(rel) + 1):
            lines.setdefault(table + rel[:k], lineno)
        _strip_value(s[eq + 1:], state)
    return lines


class _Locator:
    """Finds the line of a key path, falling back to its nearest listed ancestor."""

    def __init__(self, file: Path | str, text: str) -> None:
        self.file = file
        self.lines = key_lines(text)

    def line(self, path: tuple[str, ...]) -> int | None:
        for k in range(len(path), 0, -1):
            if path[:k] in self.lines:
                return self.lines[path[:k]]
        return None

    def error(self, path: tuple[str, ...], message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=".".join(path), line=self.line(path))


# --------------------------------------------------------------------------------------------------------------
# Validation


def _type_name(tp: Any) -> str:
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _toml_kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(value), type(value).__name__)


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value) for a TOML ``value`` against annotation ``tp``; ints are accepted as floats, bools never as
    numbers (``true`` for a port is a mistake, not 1)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _coerce(value, arg)
            if ok:
                return True, v
        return False, None
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            return False, None
        (item_tp,) = typing.get_args(tp)
        out = []
        for item in value:
            ok, v = _coerce(item, item_tp)
            if not ok:
                return False, None
            out.append(v)
        return True, out
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, None
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported config annotation {tp!r}")


def _check_value(f: dataclasses.Field, value: Any) -> str | None:
    """The bound or choice ``value`` violates, as a message, or None."""
    m = f.metadata
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list):
        if m["min_items"] is not None and len(value) < m["min_items"]:
            return f"needs at least {m['min_items']} item(s)"
        if m["unique"] and len(set(value)) != len(value):
            return f"items must not repeat, got {cut(value)}"
    for item in items:
        if isinstance(item, float) and not math.isfinite(item):  # before bounds: NaN passes every comparison
            return f"must be a finite number, got {item!r}"
        if m["choices"] is not None and item not in m["choices"]:
            return f"must be one of {', '.join(map(repr, m['choices']))}; got {cut(item)}"
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            if m["min"] is not None and item < m["min"]:
                return f"must be at least {m['min']}, got {item!r}"
            if m["max"] is not None and item > m["max"]:
                return f"must be at most {m['max']}, got {item!r}"
        if isinstance(item, str):
            if m["pattern"] is not None and not re.match(m["pattern"], item):
                return f"{cut(item)} is not allowed here (letters, digits, '_', '.', '-'; at most 64; no '/', '+', '#')"
            if any(ord(ch) < 32 for ch in item):
                return "must not contain control characters"
            if m.get("host"):
                problem = host_problem(item)
                if problem:
                    return problem
    return None


_HOST_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def host_problem(host: str) -> str | None:
    """Why ``host`` is neither an IP address nor an RFC 1123 host name, or None when it is one.

    Checked here because a name the resolver cannot even encode (``broker..local``, a label over 63
    characters) raised inside paho's network thread, which died without a word while the daemon went on.
    """
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host  # one trailing dot: a fully qualified name
    if not name:
        return "must be an IP address or a host name, got an empty name"
    if len(name) > 253:
        return f"host name {cut(host)} is longer than 253 characters"
    for label in name.split("."):
        if not label:
            return f"host name {cut(host)} has an empty label ('..', or a leading dot)"
        if len(label) > 63:
            return f"host name {cut(host)} has a label longer than 63 characters ({len(label)})"
        if not _HOST_LABEL_RE.match(label):
            return (f"host name {cut(host)}: label {cut(label)} may only hold letters, digits and '-' (not at "
                    f"its start or end)")
    if name.split(".")[-1].isdigit():
        return f"{cut(host)} is neither an IP address nor a host name (a name's last label is not all digits)"
    return None


def _build_section(cls: type, name: str, table: Any, loc: _Locator, base: Path) -> Any:
    if not isinstance(table, dict):
        raise loc.error((name,), f"must be a table [{name}], got {_toml_kind(table)}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if (name, key) in _FORBIDDEN_SECRETS:
            raise loc.error((name, key), _FORBIDDEN_SECRETS[(name, key)])
        if key not in known:
            raise loc.error((name, key), f"unknown key (known in [{name}]: {', '.join(known)})")
        f = known[key]
        ok, coerced = _coerce(value, hints[key])
        if not ok:
            raise loc.error((name, key), f"must be {_type_name(hints[key])}, got {_toml_kind(value)} {cut(value)}")
        problem = _check_value(f, coerced)
        if problem:
            raise loc.error((name, key), problem)
        if f.metadata["path"] and coerced:
            as_path = Path(coerced).expanduser()
            coerced = str(as_path if as_path.is_absolute() else base / as_path)
        values[key] = coerced
    return cls(**values)


def _check_permissions(path: Path) -> None:
    """Refuse a config file that others may write (they could point the device at their broker)."""
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH:
        raise ConfigError(f"config file is writable by others (mode {stat.S_IMODE(mode):04o}); run chmod o-w",
                          file=path)


def parse_config(text: str, *, file: Path | str = "<config>", base: Path | None = None) -> Config:
    """Validate TOML ``text`` into a :class:`Config`; relative paths resolve against ``base``.

    Raises :class:`ConfigError` (one line, naming file, line and key) on the first problem in file order.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError(f"not valid TOML: {exc}", file=file,
                          line=int(match.group(1)) if match else None) from None
    except RecursionError:  # tomllib recurses on nested arrays/tables: "a = [[[[..." must not be a traceback
        raise ConfigError("not valid TOML: values nested too deeply", file=file) from None
    loc = _Locator(file, text)
    base = base if base is not None else Path(str(file)).parent
    known = {f.name: f for f in sections()}
    built: dict[str, Any] = {}
    for name, table in data.items():
        if name not in known:
            raise loc.error((name,), f"unknown section (known: {', '.join(known)})")
        built[name] = _build_section(known[name].default_factory, name, table, loc, base)  # type: ignore[misc]
    config = Config(**built, source=Path(str(file)) if file != "<config>" else None)
    _cross_checks(config, loc)
    return config


def _cross_checks(config: Config, loc: _Locator) -> None:
    """Rules that span keys."""
    m = config.mqtt
    if m.tls_cert_file and not m.tls_ca_file:
        raise loc.error(("mqtt", "tls_cert_file"), "a client certificate needs TLS: set mqtt.tls_ca_file too")
    if m.tls_key_file and not m.tls_cert_file:
        raise loc.error(("mqtt", "tls_key_file"), "a client key without mqtt.tls_cert_file is never used")
    if m.password_file and not m.username:
        raise loc.error(("mqtt", "password_file"), "a password without mqtt.username is never sent")
    if m.message_expiry_s < config.scoring.cadence_s:
        raise loc.error(("mqtt", "message_expiry_s"),
                        f"scores would expire ({m.message_expiry_s} s) before the next one is made "
                        f"(scoring.cadence_s = {config.scoring.cadence_s} s)")
    if config.camera.enabled and config.camera.source == "":
        raise loc.error(("camera", "source"), "is empty; give a device index, path, pipeline or file")
    roi = config.camera.face_roi
    if roi and (len(roi) != 4 or roi[2] == 0 or roi[3] == 0):
        raise loc.error(("camera", "face_roi"),
                        f"must be empty or [x, y, width, height] with width, height > 0, got {cut(roi)}")
    if not (config.camera.enabled or config.microphone.enabled or config.monitor.enabled):
        raise loc.error(("camera", "enabled"), "every source is disabled: nothing could be scored")


# --------------------------------------------------------------------------------------------------------------
# Secrets


def _credential(name: str) -> Path | None:
    """``$CREDENTIALS_DIRECTORY/<name>`` when systemd loaded that credential, else None."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = Path(directory) / name
        if candidate.exists():
            return candidate
    return None


def secret_path(config: Config, credential: str, file_key: str) -> tuple[Path | None, str]:
    """Where a secret comes from: the systemd credential if loaded, else the ``mqtt.<file_key>`` file."""
    cred = _credential(credential)
    if cred is not None:
        return cred, f"credential {credential!r}"
    value = getattr(config.mqtt, file_key)
    return (Path(value) if value else None), f"mqtt.{file_key}"


def _read_secret(path: Path, what: str, *, check_others: bool, loc: _Locator | None, key: tuple[str, ...]) -> bytes:
    def fail(message: str) -> ConfigError:
        if loc is not None:
            return loc.error(key, message)
        return ConfigError(message, key=".".join(key))

    shown = _shown(str(path))
    try:
        st = path.stat()
    except OSError as exc:
        raise fail(f"cannot read secret {shown} ({what}): {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"secret {shown} ({what}) is not a regular file")
    # Group too: on a shared box the group may hold other services' users; the service's own user owns its
    # secrets (systemd credentials are already private and not checked).
    if check_others and st.st_mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH):
        raise fail(f"secret {shown} is readable or writable by group or others "
                   f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 {shown}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read secret {shown} ({what}): {exc.strerror}") from None


def password_from_text(text: str, where: str) -> str:
    """The password a secret file holds: its first line, without the line ending (``echo secret > file``).

    The one rule for every reader (``config check``, the device's publisher, the station's
    ``--password-file``), so that what ``check`` accepts is what ``run`` sends. An empty first line is
    refused: a broker would see an empty password, not a missing one.
    """
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ValueError(f"{where}: the password file is empty (its first line is the password)")
    return lines[0]


def mqtt_password(config: Config, *, _loc: _Locator | None = None) -> str | None:
    """The broker password (systemd credential first, then ``mqtt.password_file``), or None when not set.

    Read by :func:`password_from_text`; the value is never stored on the Config so that it cannot end up in a
    repr, a log line or a health message.
    """
    path, what = secret_path(config, config.mqtt.password_credential, "password_file")
    if path is None or not config.mqtt.username:
        return None
    key = ("mqtt", "password_file")
    raw = _read_secret(path, what, check_others=what.startswith("mqtt."), loc=_loc, key=key)
    try:
        return password_from_text(raw.decode("utf-8"), f"secret {path} ({what})")
    except UnicodeDecodeError:
        message = f"secret {path} ({what}) is not UTF-8 text"
    except ValueError as exc:
        message = str(exc)
    raise _loc.error(key, message) if _loc else ConfigError(message, key=".".join(key))


def mqtt_tls_keyfile(config: Config, *, _loc: _Locator | None = None) -> Path | None:
    """The client key file to hand to TLS (credential first, then ``mqtt.tls_key_file``); None without client
    certificate. Checked readable and not exposed to others."""
    if not config.mqtt.tls_cert_file:
        return None
    path, what = secret_path(config, config.mqtt.tls_key_credential, "tls_key_file")
    if path is None:
        err = ("mqtt", "tls_cert_file")
        message = (f"a client certificate needs its key: set mqtt.tls_key_file or load the systemd credential "
                   f"{config.mqtt.tls_key_credential!r}")
        raise _loc.error(err, message) if _loc else ConfigError(message, key=".".join(err))
    _read_secret(path, what, check_others=what.startswith("mqtt."), loc=_loc, key=("mqtt", "tls_key_file"))
    return path


def command_key(config: Config, *, _loc: _Locator | None = None) -> bytes | None:
    """The central station's command key (credential first, then ``mqtt.command_key_file``), or None.

    Hex text of at least 16 bytes, like the calibration key; never stored on the Config (no repr, no log)."""
    path, what = secret_path(config, config.mqtt.command_key_credential, "command_key_file")
    if path is None:
        return None
    return _command_key_in(path, what, check_others=what.startswith("mqtt."), loc=_loc,
                           key_name=("mqtt", "command_key_file"))


def station_key_file(path: Path, option: str) -> bytes:
    """The station key named on a station's command line (``neopain station run --command-key-file``): the file
    and text rules of the device's ``mqtt.command_key_file``, so both ends accept the same key files."""
    return _command_key_in(Path(path), option, check_others=True, loc=None, key_name=(option,))


def _command_key_in(path: Path, what: str, *, check_others: bool, loc: _Locator | None,
                    key_name: tuple[str, ...]) -> bytes:
    raw = _read_secret(path, what, check_others=check_others, loc=loc, key=key_name)
    try:
        key = bytes.fromhex(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:
        message = f"secret {path} ({what}) must be hex text of at least 16 bytes (e.g. `openssl rand -hex 32`)"
        raise loc.error(key_name, message) if loc else ConfigError(message, key=".".join(key_name))
    return key


def _check_readable(config: Config, loc: _Locator) -> None:
    """Certificates are public but must exist and be readable by the service."""
    for key in ("tls_ca_file", "tls_cert_file"):
        value = getattr(config.mqtt, key)
        if value:
            try:
                with open(value, "rb"):
                    pass
            except OSError as exc:
                raise loc.error(("mqtt", key), f"cannot read {_shown(value)}: {exc.strerror}") from None


# --------------------------------------------------------------------------------------------------------------
# Entry points


def load_config(path: Path | str) -> Config:
    """Read and validate ``path`` (syntax, types, bounds, cross-key rules); secrets are not touched.

    ``neopain run`` should call :func:`check_config` instead, so that it refuses exactly what
    ``neopain config check`` refuses."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8 text", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=path) from None
    return parse_config(text, file=path, base=path.parent.resolve())


def check_config(path: Path | str) -> Config:
    """Everything ``neopain run`` would refuse, without starting: :func:`load_config`, the config file's own
    permissions, and every secret and certificate readable (secrets: not by others)."""
    config = load_config(path)
    path = Path(path)
    _check_permissions(path)
    loc = _Locator(path, path.read_text(encoding="utf-8"))
    _check_readable(config, loc)
    mqtt_tls_keyfile(config, _loc=loc)
    mqtt_password(config, _loc=loc)
    command_key(config, _loc=loc)
    if config.calibration.key_file:  # signs calibration bundles: a readable key lets anyone forge one
        _read_secret(Path(config.calibration.key_file), "calibration.key_file", check_others=True, loc=loc,
                     key=("calibration", "key_file"))
    return config


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The TOML tables of ``config`` (every key, defaults included)."""
    return {s.name: dataclasses.asdict(getattr(config, s.name)) for s in sections()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escaping is valid TOML basic-string escaping for the characters we allow.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _wrap_comment(text: str, width: int = 110) -> Iterator[str]:
    line = "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            yield line
            line = "#"
        line += " " + word
    yield line


def render_toml(config: Config | None = None, *, docs: bool = True) -> str:
    """``config`` (default: the defaults) as TOML; with ``docs`` every section and key gets its documentation,
    bounds and choices as comments. This is how ``systemd/appliance.toml`` is produced."""
    config = config if config is not None else Config()
    out: list[str] = []
    if docs:
        out += ["# neopain appliance configuration (/etc/neopain/appliance.toml).",
                "# Checked by `neopain config check --config PATH`; unknown keys are refused. Relative paths are",
                "# relative to this file's folder. Secrets never go in this file: see [mqtt].", ""]
    for s in sections():
        section = getattr(config, s.name)
        cls = type(section)
        if docs:
            out += list(_wrap_comment((cls.__doc__ or "").strip().split("\n\n")[0]))
        out.append(f"[{s.name}]")
        for f in dataclasses.fields(cls):
            if docs:
                m = f.metadata
                extra = []
                if m["min"] is not None and m["max"] is not None:
                    extra.append(f"range {m['min']}..{m['max']}")
                elif m["min"] is not None:
                    extra.append(f"numbers at least {m['min']}")
                if m["choices"] is not None:
                    extra.append("one of " + ", ".join(map(str, m["choices"])))
                out += list(_wrap_comment(m["doc"] + (f" ({'; '.join(extra)})" if extra else "")))
            out.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# CLI glue: the lead wires these into appliance/cli.py as `neopain config check`.


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``neopain config check``."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"appliance config file (default: {DEFAULT_CONFIG_PATH})")


def run_config_check(args: argparse.Namespace) -> int:
    """Print ``OK`` (exit 0) or the one error line on stderr (exit 2)."""
    try:
        check_config(args.config)
    except ConfigError as exc:
        print(exc.one_line(), file=sys.stderr)
        return 2
    print("OK")
    return 0
