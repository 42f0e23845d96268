"""MODEL_DIR/manifest.json: what an exported model is, so that a device can check it before scoring.

Why a manifest: the ONNX files alone do not say which weights they hold, which pre-processing they
expect, or whether they were damaged on the way to the device. The manifest records

* the model version (config name + a hash of the weights) that every published score carries;
* the model config (to rebuild the PyTorch backend and to check input shapes);
* per part: ONNX file, its sha256 (a corrupted or swapped file is refused, see :func:`verify_part`),
  input/output names, shapes (``"batch"`` for the dynamic dimension) and dtypes, and the max abs error
  of ONNX Runtime vs PyTorch measured at export;
* the pre-processing constants (:func:`preprocessing_constants`): video mean/std/pixel scale, the log-Mel
  recipe, the vitals normalisation. The runtime compares them with the code it runs
  (:func:`check_preprocessing`), so a device never feeds a model features it was not trained on;
* optionally (``neopain export --int8``), the INT8 parts (:class:`Int8Info`): one QDQ graph per part beside
  the FP32 one, the calibration set's hash and the accuracy check that let it in (:mod:`models.quantize`).
  A part the quantizer could not handle is listed with the reason and runs in float;
* optionally (an export of ``neopain train --final``'s model), the model card (``model_card``: what the model
  was trained on and how well it did in cross-validation, :mod:`models.card`), whose ``model_card.json`` and
  ``model_card.md`` are copied beside the parts. The daemon names it in health and in its start log line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from models.configs import ModelConfig
from models.engines.base import EngineError

MANIFEST_NAME = "manifest.json"
ESTIMATOR_NAME = "estimator.pt"
FORMAT = "neopain-model/1"


class ManifestError(EngineError):
    """A model directory whose manifest is missing, malformed, or does not match its files or this code."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: name, shape (``"batch"`` marks the dynamic first dimension) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str  # numpy dtype name: float32, bool, ...

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class PartInfo:
    """One exported part (an encoder or the fusion head)."""

    onnx: str  # file name inside MODEL_DIR
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parity_max_abs_error: float

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx": self.onnx,
            "sha256": self.sha256,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "parity_max_abs_error": self.parity_max_abs_error,
        }


@dataclass(frozen=True)
class Int8Part:
    """One part's quantized (QDQ) graph, or why it has none."""

    onnx: str | None  # file name inside MODEL_DIR; None: this part stays in float
    sha256: str | None
    quantized_ops: int
    reason: str = ""  # why the part is not quantized ("" when it is)

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "sha256": self.sha256, "quantized_ops": self.quantized_ops, "reason": self.reason}


@dataclass(frozen=True)
class Int8Info:
    """The INT8 build of the model: QDQ parts, what calibrated them, and the accuracy check they passed."""

    parts: dict[str, Int8Part]
    calibration: dict[str, Any]  # source, sha256, windows, calibration_windows, held_out_windows
    accuracy: dict[str, Any]  # models.quantize.AccuracyCheck.to_dict()
    quantizer: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"parts": {n: p.to_dict() for n, p in self.parts.items()}, "calibration": self.calibration,
                "accuracy": self.accuracy, "quantizer": self.quantizer}


@dataclass(frozen=True)
class Manifest:
    model_version: str
    config_name: str
    config: dict[str, Any]
    opset: int
    parts: dict[str, PartInfo]  # in run order
    preprocessing: dict[str, Any]
    end_to_end_parity_max_abs_error: float
    exporter: dict[str, str] = field(default_factory=dict)
    int8: Int8Info | None = None  # present after `neopain export --int8` passed its accuracy check
    model_card: dict[str, Any] | None = None  # the card of the checkpoint it was exported from (models/card.py)

    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model_version": self.model_version,
            "config_name": self.config_name,
            "config": self.config,
            "opset": self.opset,
            "parts": {name: part.to_dict() for name, part in self.parts.items()},
            "preprocessing": self.preprocessing,
            "end_to_end_parity_max_abs_error": self.end_to_end_parity_max_abs_error,
            "exporter": self.exporter,
            **({"int8": self.int8.to_dict()} if self.int8 is not None else {}),
            **({"model_card": self.model_card} if self.model_card is not None else {}),
        }


def preprocessing_constants(cfg: ModelConfig) -> dict[str, Any]:
    """Every constant of ``models.features`` that decides what the network sees, as JSON-ready values."""
    from models.features import audio as fa
    from models.features import vitals as fv
    from models.features.video import RESIZE_RULE

    v, a, t = cfg.video, cfg.audio, cfg.vitals
    constants = {
        "video": {
            "frames": v.frames,
            "crop_size": v.crop_size,
            "mean": list(v.mean),
            "std": list(v.std),
            "pixel_scale": v.pixel_scale,
            "layout": "RGB uint8 (T,H,W,3) -> (3,T,H,W) float32",
            "resize": RESIZE_RULE,
            "frame_sampling": "uniform linspace, first and last included",
        },
        "audio": {
            "sample_rate": fa.SAMPLE_RATE,
            "window_samples": fa.WINDOW_SAMPLES,
            "hop_samples": fa.HOP_SAMPLES,
            "fft_length": fa.FFT_LENGTH,
            "window": "periodic hann",
            "spectrum": "magnitude",
            "mel_bands": fa.MEL_BANDS,
            "mel_low_hz": fa.MEL_LOW_HZ,
            "mel_high_hz": fa.MEL_HIGH_HZ,
            "mel_scale": "htk",
            "log_offset": fa.LOG_OFFSET,
            "patch_frames": fa.PATCH_FRAMES,
            "max_patches": a.max_patches,
            "padding_value": fa.SILENCE_LOG_MEL,
        },
        "vitals": {
            "window_s": t.window_s,
            "grid_hz": t.grid_hz,
            "samples": t.samples,
            "channels": list(fv.CHANNELS),
            "hr_center_bpm": fv.HR_CENTER_BPM,
            "hr_scale_bpm": fv.HR_SCALE_BPM,
            "spo2_center_pct": fv.SPO2_CENTER_PCT,
            "spo2_scale_pct": fv.SPO2_SCALE_PCT,
            "max_gap_s": fv.MAX_GAP_S,
            "rr_min_ms": fv.RR_MIN_MS,
            "rr_max_ms": fv.RR_MAX_MS,
            "max_successive_change": fv.MAX_SUCCESSIVE_CHANGE,
            "spo2_min_pct": fv.SPO2_MIN_PCT,
            "spo2_max_pct": fv.SPO2_MAX_PCT,
            "hrv_features": ["mean_hr", "rmssd", "sdnn"],
            "hrv_log_center": fv.HRV_LOG_CENTER,
            "hrv_log_scale": fv.HRV_LOG_SCALE,
        },
    }
    return json.loads(json.dumps(constants))  # exactly what a JSON round trip gives back


def check_preprocessing(manifest: Manifest) -> None:
    """Refuse a model whose recorded pre-processing differs from the code that would feed it."""
    here = preprocessing_constants(manifest.model_config())
    differing = []
    for group in sorted(set(here) | set(manifest.preprocessing)):
        mine, theirs = here.get(group, {}), manifest.preprocessing.get(group, {})
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                differing.append(f"preprocessing.{group}.{key}: manifest {theirs.get(key)!r} vs code {mine.get(key)!r}")
    if differing:
        raise ManifestError(
            "the model was exported for other pre-processing than this code runs; re-export it: " + "; ".join(differing)
        )


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (a half-written manifest would make the device refuse the model)."""
    path = Path(model_dir) / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}: key {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(f"{where}: key {key!r} must be {names}, got {type(value).__name__}")
    return value


def _tensor(data: Any, where: str) -> TensorSpec:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must be an object")
    shape = _get(data, "shape", list, where)
    for i, dim in enumerate(shape):
        if not (isinstance(dim, str) or (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0)):
            raise ManifestError(f"{where}.shape[{i}] must be a non-negative int or a name, got {dim!r}")
    return TensorSpec(_get(data, "name", str, where), tuple(shape), _get(data, "dtype", str, where))


def _int8(data: Any, where: str, part_names: set[str]) -> Int8Info:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must be an object")
    parts = {}
    for name, part in _get(data, "parts", dict, where).items():
        pw = f"{where}.parts.{name}"
        if name not in part_names:
            raise ManifestError(f"{pw}: no FP32 part of that name (parts: {sorted(part_names)})")
        if not isinstance(part, dict):
            raise ManifestError(f"{pw} must be an object")
        onnx, sha = part.get("onnx"), part.get("sha256")
        if (onnx is None) != (sha is None) or not all(v is None or isinstance(v, str) for v in (onnx, sha)):
            raise ManifestError(f"{pw}: keys 'onnx' and 'sha256' must both be strings or both null")
        parts[name] = Int8Part(onnx, sha, _get(part, "quantized_ops", int, pw), str(part.get("reason", "")))
    accuracy = _get(data, "accuracy", dict, where)
    if accuracy.get("passed") is not True:
        raise ManifestError(f"{where}.accuracy: the INT8 parts did not pass their accuracy check; re-export")
    return Int8Info(parts, _get(data, "calibration", dict, where), accuracy, dict(data.get("quantizer", {})))


def _model_card(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must be an object")
    _get(data, "model_version", str, where)
    return data


def manifest_from_dict(data: Any, where: str = MANIFEST_NAME) -> Manifest:
    """Validate and build a :class:`Manifest`; errors name the offending key."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: must be a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise ManifestError(f"{where}: key 'format' is {fmt!r}, this code reads {FORMAT!r}")
    parts = {}
    for name, part in _get(data, "parts", dict, where).items():
        pw = f"{where}: parts.{name}"
        if not isinstance(part, dict):
            raise ManifestError(f"{pw} must be an object")
        parts[name] = PartInfo(
            onnx=_get(part, "onnx", str, pw),
            sha256=_get(part, "sha256", str, pw),
            inputs=tuple(_tensor(t, f"{pw}.inputs[{i}]") for i, t in enumerate(_get(part, "inputs", list, pw))),
            outputs=tuple(_tensor(t, f"{pw}.outputs[{i}]") for i, t in enumerate(_get(part, "outputs", list, pw))),
            parity_max_abs_error=float(_get(part, "parity_max_abs_error", (int, float), pw)),
        )
    manifest = Manifest(
        model_version=_get(data, "model_version", str, where),
        config_name=_get(data, "config_name", str, where),
        config=_get(data, "config", dict, where),
        opset=_get(data, "opset", int, where),
        parts=parts,
        preprocessing=_get(data, "preprocessing", dict, where),
        end_to_end_parity_max_abs_error=float(_get(data, "end_to_end_parity_max_abs_error", (int, float), where)),
        exporter=dict(data.get("exporter", {})),
        int8=_int8(data["int8"], f"{where}: int8", set(parts)) if data.get("int8") is not None else None,
        model_card=_model_card(data["model_card"], f"{where}: model_card") if data.get("model_card") is not None else None,
    )
    try:
        manifest.model_config()
    except (ValueError, TypeError) as exc:
        raise ManifestError(f"{where}: key 'config' is not a model config: {exc}") from exc
    return manifest


def read_manifest(model_dir: str | Path) -> Manifest:
    """Read ``MODEL_DIR/manifest.json`` with clear errors (missing, not JSON, missing/mistyped key)."""
    path = Path(model_dir) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path} does not exist: export the model with `neopain export --out {model_dir}`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return manifest_from_dict(data, str(path))


def verify_part(model_dir: str | Path, manifest: Manifest, name: str) -> Path:
    """Path of part ``name``'s ONNX file after checking it exists and its sha256 matches the manifest."""
    if name not in manifest.parts:
        raise ManifestError(f"the manifest has no part {name!r} (has {list(manifest.parts)})")
    part = manifest.parts[name]
    return _checked_file(Path(model_dir) / part.onnx, "ONNX file", name, str(part.sha256),
                         missing="re-export the model", changed="re-export or re-install the model")


def verify_int8_part(model_dir: str | Path, manifest: Manifest, name: str) -> Path | None:
    """Path of part ``name``'s QDQ graph after its sha256 check; None when the model or the part has none."""
    if manifest.int8 is None or name not in manifest.int8.parts or manifest.int8.parts[name].onnx is None:
        return None
    part = manifest.int8.parts[name]
    remedy = "re-export with `neopain export --int8`"
    return _checked_file(Path(model_dir) / str(part.onnx), "INT8 file", name, str(part.sha256),
                         missing=remedy, changed=remedy)


def _checked_file(path: Path, what: str, name: str, expected_sha256: str, *, missing: str, changed: str) -> Path:
    """``path`` after checking that it exists and that its sha256 is the manifest's (what/name/remedies: the
    error's words)."""
    from models.engines.cache import sha256_file

    if not path.is_file():
        raise ManifestError(f"{what} {path} of part {name!r} is missing; {missing}")
    digest = sha256_file(path)
    if digest != expected_sha256:
        raise ManifestError(
            f"{what} {path} of part {name!r} is corrupted or replaced (sha256 {digest[:12]}... vs manifest "
            f"{expected_sha256[:12]}...); {changed}"
        )
    return path


__all__ = [
    "ESTIMATOR_NAME",
    "MANIFEST_NAME",
    "Int8Info",
    "Int8Part",
    "Manifest",
    "ManifestError",
    "PartInfo",
    "TensorSpec",
    "check_preprocessing",
    "manifest_from_dict",
    "preprocessing_constants",
    "read_manifest",
    "verify_int8_part",
    "verify_part",
    "write_manifest",
]
