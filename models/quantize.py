"""INT8 from one quantized graph: static QDQ quantization of the exported parts, checked against FP32.

Why one graph: the CPU (ONNX Runtime) and the GPU (TensorRT, explicit quantization) run the same
quantized network, so the accuracy measured here on held-out windows is the accuracy the device gets,
whichever backend it falls back to. The graph follows TensorRT's rules, the stricter of the two:

* QDQ format (``QuantizeLinear``/``DequantizeLinear`` around float ops), opset of the export (>= 13 for
  per-channel weights);
* INT8 **symmetric** activations (zero point 0, per tensor) and INT8 symmetric weights **per output
  channel**; biases stay float (TensorRT fuses them itself);
* calibrated with min/max over quality-gated windows (``neopain calibrate capture-int8`` files, or a
  dataset's windows) — every part on the windows' own arrays, the fusion head on the tokens the FP32
  encoders give for them;
* what is quantized, per part (:data:`PART_OPS`): the CNNs (video, vitals) fully — convolutions, ReLU,
  max-pooling and residual additions; the transformer parts (audio, fusion) only their weight-bearing
  ops (Conv/Gemm/MatMul with constant weights): their attention scores, masks (finite large negatives)
  and softmax stay float, where INT8 would lose the masked-out keys;
* convolutions over the raw input channels (the RGB stem, the log-Mel and vitals input convs) stay float
  (:func:`float_stems`): too shallow for INT8 to pay off;
* the pre-ReLU tensor takes the post-ReLU scale (:func:`align_relu_scales`): ReLU clears the negative
  half anyway, so nothing is lost, the quantization of conv+ReLU is the one TensorRT fuses, and ONNX
  Runtime's x86 kernels can fold the ReLU away (:mod:`models.engines.ort_int8`).

A part that the quantizer cannot handle stays float; the manifest records why, and ``build-engines``
uses TensorRT's implicit calibrator for that part only (logged).

The accuracy check (:func:`accuracy_check`) runs every INT8 build on windows held out of calibration,
with ONNX Runtime on the CPU: max and mean absolute ``nips`` difference vs FP32, and, when the windows
carry ratings (a dataset), the MAE change against them. The build is refused when the MAE worsens by
more than :data:`MAX_MAE_INCREASE`; without ratings the MAE change cannot be measured, and the mean
absolute ``nips`` difference — an upper bound of how much the MAE can worsen (triangle inequality) —
must stay within the same limit.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from models.engines.base import EngineError
from models.manifest import Manifest

log = logging.getLogger(__name__)

QDQ_SUFFIX = ".int8.onnx"
MAX_MAE_INCREASE = 0.05  # NIPS points
DEFAULT_HELD_OUT = 0.25
DEFAULT_WINDOWS = 64

CNN_OPS = ("Conv", "Relu", "MaxPool", "Add", "Gemm", "MatMul")
DENSE_OPS = ("Conv", "Relu", "MaxPool", "Gemm", "MatMul")
PART_OPS: dict[str, tuple[str, ...]] = {
    "video_encoder": CNN_OPS,
    "vitals_encoder": CNN_OPS,
    "audio_encoder": DENSE_OPS,
    "fusion": DENSE_OPS,
}
QUANTIZER = {
    "format": "QDQ",
    "activations": "int8 symmetric per tensor",
    "weights": "int8 symmetric per output channel",
    "bias": "float",
    "calibration": "MinMax",
}


class QuantizationError(EngineError):
    """A calibration set or quantized build that must not be used (wrong shapes, refused accuracy)."""


class QuantizationRefused(QuantizationError):
    """The INT8 parts are less accurate than allowed; the FP32 parts stay the model."""


# ------------------------------------------------------------------------------------------------ calibration set

@dataclass(frozen=True)
class CalibrationSet:
    """Quality-gated windows (model inputs, no batch dim), their ratings when known, and where they came from."""

    windows: list[dict[str, np.ndarray]]
    ratings: np.ndarray | None  # (N,) mean rater NIPS; None for captured windows (no ratings on the device)
    source: str
    sha256: str

    def __len__(self) -> int:
        return len(self.windows)


def windows_sha256(windows: Sequence[Mapping[str, np.ndarray]], ratings: np.ndarray | None = None) -> str:
    """Identity of a calibration set: every array's name, shape, dtype and bytes, in order (+ ratings)."""
    digest = hashlib.sha256()
    for window in windows:
        for name in sorted(window):
            array = np.ascontiguousarray(window[name])
            digest.update(f"{name}|{array.shape}|{array.dtype}|".encode())
            digest.update(array.tobytes())
    if ratings is not None:
        digest.update(b"ratings|" + np.asarray(ratings, dtype=np.float64).tobytes())
    return digest.hexdigest()


def calibration_set(windows: Sequence[Mapping[str, np.ndarray]], manifest: Manifest, source: str,
                    ratings: Sequence[float] | None = None) -> CalibrationSet:
    """Check ``windows`` against the model's input shapes and dtypes and wrap them.

    A window of the wrong shape is refused naming the window, the tensor and both shapes.
    """
    from models.engines.windows import window_specs

    specs = window_specs(manifest)
    checked = []
    for index, window in enumerate(windows):
        where = f"calibration window {index} of {source}"
        for name, (shape, dtype) in specs.items():
            if name not in window:
                raise QuantizationError(f"{where}: tensor {name!r} is missing (has {sorted(window)})")
            got = tuple(np.shape(window[name]))
            if got != shape:
                raise QuantizationError(f"{where}: tensor {name!r} has shape {got}, the model wants {shape}")
        checked.append({n: np.asarray(window[n]).astype(dtype, copy=False) for n, (_, dtype) in specs.items()})
    if len(checked) < 2:
        raise QuantizationError(f"{source}: {len(checked)} calibration window(s); INT8 needs at least 2 "
                                "(calibration + held-out accuracy check)")
    rated = None if ratings is None else np.asarray(ratings, dtype=np.float64)
    if rated is not None and rated.shape != (len(checked),):
        raise QuantizationError(f"{source}: {rated.shape} ratings for {len(checked)} windows")
    return CalibrationSet(checked, rated, source, windows_sha256(checked, rated))


def load_calibration_set(path: str | Path, manifest: Manifest, limit: int = DEFAULT_WINDOWS) -> CalibrationSet:
    """The windows in ``path``: a directory of ``.npz`` windows (``calibrate capture-int8``), else a dataset.

    Dataset windows carry their ratings, so the accuracy check can measure the MAE change.
    """
    from models.engines.windows import CALIBRATION_SUFFIX, read_calibration_dir

    path = Path(path)
    if not path.is_dir():
        raise QuantizationError(f"calibration set {path} does not exist (a directory of {CALIBRATION_SUFFIX} "
                                "windows or a dataset)")
    if any(path.glob(f"*{CALIBRATION_SUFFIX}")):
        windows = read_calibration_dir(path, manifest, limit=limit)
        return calibration_set(windows, manifest, f"windows {path}")
    windows, ratings = dataset_windows(path, manifest, limit)
    return calibration_set(windows, manifest, f"dataset {path}", ratings)


def dataset_windows(dataset: str | Path, manifest: Manifest, limit: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Pre-processed windows of a dataset in the neopain layout, spread over its recordings, with ratings."""
    from models.data.layout import DatasetError
    from models.data.loader import iter_windows
    from models.samples import samples_from_windows

    cfg = manifest.model_config()
    try:
        raw = list(iter_windows(dataset, num_frames=cfg.video.frames, vitals_window_s=cfg.vitals.window_s))
    except DatasetError as exc:
        raise QuantizationError(f"{dataset} is neither a directory of .npz calibration windows nor a dataset: {exc}") from exc
    if not raw:
        raise QuantizationError(f"dataset {dataset} has no windows to calibrate with")
    pick = np.unique(np.linspace(0, len(raw) - 1, min(limit, len(raw))).round().astype(int))
    samples = samples_from_windows([raw[i] for i in pick], cfg, progress=False)
    windows = [{n: t[i].numpy() for n, t in samples.inputs.items()} for i in range(len(pick))]
    return windows, samples.nips.numpy().astype(np.float64)


def split_held_out(n: int, fraction: float = DEFAULT_HELD_OUT) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) indices: every k-th window held out (k = round(1/fraction)), at least one each."""
    if n < 2:
        raise QuantizationError(f"{n} window(s) cannot be split into calibration and held-out")
    if not 0 < fraction < 1:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    k = max(2, int(round(1 / fraction)))
    held = np.arange(k - 1, n, k)
    if held.size == 0:
        held = np.array([n - 1])
    calibrate = np.setdiff1d(np.arange(n), held)
    return calibrate, held


# ------------------------------------------------------------------------------------------------ one part

class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds: Iterator[Mapping[str, np.ndarray]] = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        return None if feed is None else dict(feed)

    def __iter__(self):  # CalibrationDataReader protocol in newer onnxruntime
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed


def quantize_part(fp32_path: str | Path, out_path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]],
                  op_types: Sequence[str]) -> int:
    """Write the QDQ graph of ``fp32_path`` to ``out_path``; returns how many ops were quantized.

    ``feeds`` are the part's calibration inputs by ONNX input name (batch dim included).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_Reader, CalibrationDataReader), {})(feeds)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="neopain-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference + constant folding, what the quantizer wants first
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference fails on some graphs; plain ONNX shapes do
            log.info("%s: symbolic shape inference failed (%s); quantizing with ONNX shape inference", fp32_path, exc)
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out_path), reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=float_stems(onnx.load(str(prepared), load_external_data=False)),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,  # TensorRT fuses float biases; int32 bias DQ is not in its ONNX subset
                "MatMulConstBOnly": True,  # weights only: attention scores (Q·Kᵀ) stay float
                "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # (K, N) weights: per output column
            },
        )
    model = onnx.load(str(out_path))
    align_relu_scales(model)
    onnx.save(model, str(out_path))
    return sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")


STEM_MAX_CHANNELS = 4


def float_stems(model: Any) -> list[str]:
    """Convolutions over at most :data:`STEM_MAX_CHANNELS` input channels (the RGB stem): they stay float.

    Why: with 3 input channels the INT8 GEMM's depth is only 3·k³ and ONNX Runtime's 3-D QLinearConv
    spends its time in im2col; the I3D stem (5x7x7 over RGB) took 548 ms in INT8 vs 222 ms in FP32 on the
    2-core CPU — half of the whole INT8 video encoder. TensorRT runs it in FP16 instead.
    """
    weights = {t.name: t for t in model.graph.initializer}
    stems = []
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            shape = tuple(weights[node.input[1]].dims)
            if len(shape) >= 3 and shape[1] <= STEM_MAX_CHANNELS:
                stems.append(node.name)
    return stems


def align_relu_scales(model: Any) -> int:
    """Give every ``Q -> DQ -> Relu -> Q`` chain's first Q the ReLU output's scale; returns how many.

    Exact for everything the ReLU lets through (its negative side becomes 0 either way); the chain then
    quantizes conv+ReLU once, as TensorRT fuses it and as ONNX Runtime's x86 rewrite folds it.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    prod = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    aligned = 0
    for relu in (n for n in graph.node if n.op_type == "Relu"):
        dq_a = prod.get(relu.input[0])
        q_a = prod.get(dq_a.input[0]) if dq_a is not None and dq_a.op_type == "DequantizeLinear" else None
        after = readers.get(relu.output[0], [])
        if q_a is None or q_a.op_type != "QuantizeLinear" or len(after) != 1 or after[0].op_type != "QuantizeLinear":
            continue
        if len(readers.get(q_a.output[0], [])) != 1 or len(readers.get(dq_a.output[0], [])) != 1:
            continue  # the pre-ReLU tensor is read elsewhere too: its own scale must stay
        q_b = after[0]
        scale_b = q_b.input[1]
        if scale_b not in inits or q_a.input[1] not in inits:
            continue
        if np.asarray(numpy_helper.to_array(inits[scale_b])).size != 1:
            continue
        q_a.input[1] = scale_b
        dq_a.input[1] = scale_b
        aligned += 1
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return aligned


# ------------------------------------------------------------------------------------------------ accuracy

@dataclass(frozen=True)
class AccuracyCheck:
    """INT8 vs FP32 on held-out windows (ONNX Runtime, CPU), and the verdict."""

    held_out_windows: int
    nips_max_abs_diff: float
    nips_mean_abs_diff: float
    mae_fp32: float | None  # against the ratings; None without ratings
    mae_int8: float | None
    mae_change: float | None  # int8 - fp32 (positive = worse)
    max_mae_increase: float
    passed: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def summary(self) -> str:
        mae = (f"MAE {self.mae_fp32:.4f} -> {self.mae_int8:.4f} ({self.mae_change:+.4f} NIPS)"
               if self.mae_change is not None else "MAE change not measurable (no ratings)")
        return (f"held-out {self.held_out_windows} windows: nips |INT8 - FP32| max {self.nips_max_abs_diff:.4f}, "
                f"mean {self.nips_mean_abs_diff:.4f}; {mae}")


def _stack(windows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {n: np.stack([np.asarray(w[n]) for w in windows]) for n in windows[0]}


def _run_parts(engines: Mapping[str, Any], manifest: Manifest, windows: Sequence[Mapping[str, np.ndarray]],
               batch: int = 4) -> list[dict[str, np.ndarray]]:
    """Every tensor of the parts run in sequence (each an Engine) over ``windows``, per batch."""
    out = []
    for start in range(0, len(windows), batch):
        values = _stack(windows[start:start + batch])
        for name, part in manifest.parts.items():
            values.update(engines[name].run({n: values[n] for n in part.input_names}))
        out.append(values)
    return out


def _run_nips(engines: Mapping[str, Any], manifest: Manifest, windows: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """``nips`` of the parts run in sequence over ``windows``."""
    return np.concatenate([np.asarray(v["nips"], dtype=np.float64).reshape(-1) for v in _run_parts(engines, manifest, windows)])


def part_feeds(model_dir: Path, manifest: Manifest, windows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per part, its calibration inputs by name (batch 1): the encoders get the windows' own arrays, the
    fusion head the tokens the FP32 encoders compute for them (ONNX Runtime, CPU)."""
    from models.engines.onnxruntime import OnnxRuntimeEngine

    engines = {n: OnnxRuntimeEngine(model_dir / p.onnx) for n, p in manifest.parts.items()}
    try:
        runs = _run_parts(engines, manifest, windows, batch=1)
    finally:
        for engine in engines.values():
            engine.close()
    return {name: [{n: values[n] for n in part.input_names} for values in runs] for name, part in manifest.parts.items()}


def accuracy_check(
    model_dir: str | Path,
    manifest: Manifest,
    int8_files: Mapping[str, str | None],
    windows: Sequence[Mapping[str, np.ndarray]],
    ratings: np.ndarray | None = None,
    max_mae_increase: float = MAX_MAE_INCREASE,
    threads: int = 0,
) -> AccuracyCheck:
    """Compare the INT8 parts (``int8_files``: part -> QDQ file name, None = float) with FP32 on ``windows``.

    Runs exactly what the CPU device runs (:class:`~models.engines.onnxruntime.OnnxRuntimeEngine`, QDQ parts
    through the x86 rewrite).
    """
    from models.engines.onnxruntime import OnnxRuntimeEngine

    model_dir = Path(model_dir)
    fp32 = {n: OnnxRuntimeEngine(model_dir / p.onnx, intra_op_threads=threads) for n, p in manifest.parts.items()}
    int8 = {n: (OnnxRuntimeEngine(model_dir / f, intra_op_threads=threads, qdq=True) if f else fp32[n])
            for n, f in int8_files.items()}
    try:
        want, got = _run_nips(fp32, manifest, windows), _run_nips(int8, manifest, windows)
    finally:
        for engine in {*fp32.values(), *int8.values()}:
            engine.close()
    diff = np.abs(got - want)
    mae_fp32 = mae_int8 = change = None
    if ratings is not None and len(ratings) == len(windows):
        mae_fp32, mae_int8 = float(np.mean(np.abs(want - ratings))), float(np.mean(np.abs(got - ratings)))
        change = mae_int8 - mae_fp32
        passed = change <= max_mae_increase
        note = f"MAE against the ratings may worsen by at most {max_mae_increase} NIPS"
    else:
        passed = float(diff.mean()) <= max_mae_increase
        note = (f"no ratings: the MAE change is not measurable; the mean |INT8 - FP32| (an upper bound of how much "
                f"the MAE can worsen) must stay within {max_mae_increase} NIPS")
    return AccuracyCheck(len(windows), float(diff.max()), float(diff.mean()), mae_fp32, mae_int8, change,
                         max_mae_increase, bool(passed), note)


# ------------------------------------------------------------------------------------------------ model dir

def quantize_model_dir(
    model_dir: str | Path,
    calibration: CalibrationSet,
    *,
    held_out: float = DEFAULT_HELD_OUT,
    max_mae_increase: float = MAX_MAE_INCREASE,
    progress: bool = True,
) -> Manifest:
    """Quantize every part of the exported model in ``model_dir``, check accuracy, record it in the manifest.

    Returns the updated manifest. Raises :class:`QuantizationRefused` (QDQ files removed, the FP32 manifest
    left as it was) when the accuracy check fails, :class:`QuantizationError` when nothing can be quantized.
    """
    from dataclasses import replace

    import onnxruntime
    from tqdm import tqdm

    from models.engines.cache import sha256_file
    from models.manifest import Int8Info, Int8Part, read_manifest, verify_part, write_manifest

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if manifest.int8 is not None:
        manifest = replace(manifest, int8=None)
        write_manifest(model_dir, manifest)  # never leave a manifest pointing at QDQ files being replaced
    for name in manifest.parts:
        verify_part(model_dir, manifest, name)
    for stale in model_dir.glob(f"*{QDQ_SUFFIX}"):
        stale.unlink()
    calibrate, held = split_held_out(len(calibration), held_out)
    feeds = part_feeds(model_dir, manifest, [calibration.windows[i] for i in calibrate])
    parts: dict[str, Int8Part] = {}
    written: list[Path] = []
    try:
        for name, info in tqdm(manifest.parts.items(), desc="int8", unit="part", disable=not progress):
            out = model_dir / (Path(info.onnx).stem + QDQ_SUFFIX)
            try:
                count = quantize_part(model_dir / info.onnx, out, feeds[name], PART_OPS.get(name, DENSE_OPS))
            except Exception as exc:  # the quantizer raises many types (shape inference, unsupported ops...)
                out.unlink(missing_ok=True)
                reason = f"the quantizer failed: {type(exc).__name__}: {exc}"[:400]
                log.warning("part %s stays in float: %s", name, reason)
                parts[name] = Int8Part(None, None, 0, reason)
                continue
            if count == 0:
                out.unlink(missing_ok=True)
                parts[name] = Int8Part(None, None, 0, "no quantizable op")
                continue
            written.append(out)
            parts[name] = Int8Part(out.name, sha256_file(out), count)
        if not written:
            raise QuantizationError("no part could be quantized: " + "; ".join(f"{n}: {p.reason}" for n, p in parts.items()))
        ratings = None if calibration.ratings is None else calibration.ratings[held]
        check = accuracy_check(model_dir, manifest, {n: p.onnx for n, p in parts.items()},
                               [calibration.windows[i] for i in held], ratings, max_mae_increase)
        log.info("INT8 accuracy: %s", check.summary())
        if not check.passed:
            raise QuantizationRefused(
                f"INT8 refused, the FP32 model is kept: {check.summary()}; limit {max_mae_increase} NIPS ({check.note})")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    int8 = Int8Info(
        parts=parts,
        calibration={"source": calibration.source, "sha256": calibration.sha256, "windows": len(calibration),
                     "calibration_windows": int(calibrate.size), "held_out_windows": int(held.size),
                     "ratings": calibration.ratings is not None},
        accuracy=check.to_dict(),
        quantizer={**QUANTIZER, "onnxruntime": onnxruntime.__version__,
                   "ops": {n: list(PART_OPS.get(n, DENSE_OPS)) for n in manifest.parts}},
    )
    manifest = replace(manifest, int8=int8)
    write_manifest(model_dir, manifest)
    return manifest


__all__ = [
    "AccuracyCheck",
    "CalibrationSet",
    "MAX_MAE_INCREASE",
    "QDQ_SUFFIX",
    "QuantizationError",
    "QuantizationRefused",
    "accuracy_check",
    "align_relu_scales",
    "calibration_set",
    "load_calibration_set",
    "quantize_model_dir",
    "quantize_part",
    "split_held_out",
    "windows_sha256",
]
