"""ONNX export of neopain models and a parity check against ONNX Runtime.

Exporter choice (measured with torch 2.13 CPU, onnx 1.23, onnxruntime 1.32, onnxscript 0.7):
both the TorchScript ("legacy", ``dynamo=False``) and the ``torch.export`` ("dynamo") exporters
export the cross-modal fusion with a dynamic batch and match ONNX Runtime to ~1e-6. The default
here is the **legacy** exporter because

* it writes opset 17 natively; the dynamo exporter only implements opset >= 18 and down-converts
  (with a fallback to the onnx C API converter), and TensorRT/older runtimes on the device are the
  consumers we must satisfy;
* it takes ~1-2 s for the tiny estimator where the dynamo exporter took ~30 s for the fusion head
  alone on the 2-core build machine, which matters for CI and for export-on-commission;
* dynamic batch through ``dynamic_axes`` is verified by :func:`onnx_parity` at several batch sizes.

``nn.MultiheadAttention``'s fused fast path cannot be traced by the legacy exporter, so it is
switched off for the duration of the export (``torch.backends.mha.set_fastpath_enabled(False)``)
and restored afterwards. ``dynamo=True`` stays available (``export_onnx(..., dynamo=True)``) for
when the legacy exporter is removed; the tests exercise it too.

Inputs are passed as a dict in forward order; its keys become the ONNX input names. The legacy
exporter drops inputs the graph never reads (e.g. a unimodal baseline's other modalities), so a
runtime must feed inputs by the names the ONNX file declares, as :func:`onnx_parity` does. Outputs are
named ``output_names`` (default: the estimator's ``nips``, ``item_logits``, ``modality_weights`` for
three outputs, ``output`` for one).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from models.configs import CONFIGS
from models.engines.base import EngineError

DEFAULT_OUTPUT_NAMES = ("nips", "item_logits", "modality_weights")


@contextlib.contextmanager
def _mha_fastpath_disabled() -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _as_tuple(outputs: object) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, torch.Tensor):
        return (outputs,)
    if isinstance(outputs, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in outputs):
        return tuple(outputs)
    raise TypeError(f"module must return a tensor or a tuple of tensors, got {type(outputs).__name__}")


def _output_names(module: nn.Module, inputs: Mapping[str, torch.Tensor], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        return list(names)
    with torch.no_grad():
        count = len(_as_tuple(module(**inputs)))
    if count == len(DEFAULT_OUTPUT_NAMES):
        return list(DEFAULT_OUTPUT_NAMES)
    if count == 1:
        return ["output"]
    return [f"output_{i}" for i in range(count)]


def export_onnx(
    module: nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    path: str | Path,
    opset: int = 17,
    dynamic_batch: bool = True,
    output_names: Sequence[str] | None = None,
    dynamo: bool = False,
) -> Path:
    """Export ``module`` (in eval mode) to ``path`` and return the path.

    All shapes are fixed to those of ``example_inputs`` except, with ``dynamic_batch``, dim 0 of
    every input and output. The module's training flag is restored afterwards.
    """
    if not example_inputs:
        raise ValueError("example_inputs must name at least one input")
    for name, value in example_inputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"example input {name!r} must be a tensor, got {type(value).__name__}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization, masks), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = dict(example_inputs)
    names_in = list(inputs)
    was_training = module.training
    module.eval()
    try:
        with _mha_fastpath_disabled(), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            names_out = _output_names(module, inputs, output_names)
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=4096)
                program = torch.onnx.export(
                    module,
                    tuple(inputs.values()),
                    dynamo=True,
                    input_names=names_in,
                    output_names=names_out,
                    opset_version=opset,
                    dynamic_shapes={k: {0: batch} for k in names_in} if dynamic_batch else None,
                    external_data=False,
                    verbose=False,
                )
                program.save(str(path))
            else:
                torch.onnx.export(
                    module,
                    tuple(inputs.values()),
                    str(path),
                    dynamo=False,
                    input_names=names_in,
                    output_names=names_out,
                    opset_version=opset,
                    dynamic_axes={k: {0: "batch"} for k in names_in + names_out} if dynamic_batch else None,
                    do_constant_folding=True,
                )
    finally:
        module.train(was_training)
    return path


def onnx_parity(module: nn.Module, path: str | Path, inputs: Mapping[str, torch.Tensor]) -> float:
    """Max absolute difference between ``module`` (eval, PyTorch) and the ONNX file on ORT CPU.

    Compares every output in order; a shape mismatch is an error, not a large number.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_inputs = [i.name for i in session.get_inputs()]
    missing = [name for name in onnx_inputs if name not in inputs]
    if missing:
        raise ValueError(f"the ONNX model needs inputs {missing} that were not given (given: {sorted(inputs)})")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            reference = _as_tuple(module(**inputs))
    finally:
        module.train(was_training)
    # The exporter prunes inputs the graph never reads (a unimodal baseline reads one modality),
    # so feed exactly the inputs the file declares, by name.
    outputs = session.run(None, {name: inputs[name].detach().cpu().numpy() for name in onnx_inputs})
    if len(outputs) != len(reference):
        raise ValueError(f"ONNX model has {len(outputs)} outputs, PyTorch module {len(reference)}")
    worst = 0.0
    for index, (got, want) in enumerate(zip(outputs, reference)):
        want_np = want.detach().cpu().numpy()
        if got.shape != want_np.shape:
            raise ValueError(f"output {index}: ONNX shape {got.shape} != PyTorch shape {want_np.shape}")
        if want_np.size:
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want_np.astype(np.float64)))))
    return worst


# --------------------------------------------------------------------------------------------------------------
# A model directory for the device: four ONNX parts + estimator.pt + manifest.json (`neopain export`).

PARITY_TOLERANCE = 1e-3  # fp32: ORT and PyTorch agree to ~1e-6; 1e-3 only tolerates kernel-order noise


class ExportError(RuntimeError):
    """An export that must not be installed: bad checkpoint, or a part whose ONNX disagrees with PyTorch."""


def weights_sha256(model: nn.Module) -> str:
    """Hash of every tensor of the state dict (names, shapes, dtypes, bytes): the weights' identity."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        array = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(array.shape)}|{array.dtype}|".encode())
        digest.update(array.numpy().tobytes() if array.dtype != torch.bfloat16 else array.float().numpy().tobytes())
    return digest.hexdigest()


def model_version(model: nn.Module, config_name: str) -> str:
    """``neopain-<config>-<12 hex of the weights hash>``: changes whenever any weight does."""
    return f"neopain-{config_name}-{weights_sha256(model)[:12]}"


def save_estimator(model: nn.Module, cfg: "ModelConfig", path: str | Path, version: str) -> Path:  # noqa: F821
    """``estimator.pt`` for the PyTorch backend: state dict + model config (+ version), nothing pickled."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": "neopain-estimator/1", "model": model.state_dict(), "model_config": cfg.to_dict(),
                "model_version": version}, tmp)
    tmp.replace(path)
    return path


def load_estimator_checkpoint(path: str | Path) -> tuple[nn.Module, "ModelConfig"]:  # noqa: F821
    """A PainEstimator (eval mode) and its config from ``estimator.pt`` or a training checkpoint (``models/training``).

    A training checkpoint must be of kind ``fusion`` (the baselines are comparisons, not what the device
    runs). Errors name the file and the missing/offending key.
    """
    from models.configs import ModelConfig
    from models.estimator import create_pain_estimator

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a damaged or foreign file
        raise ExportError(f"checkpoint {path} cannot be read by torch.load ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise ExportError(f"checkpoint {path} must hold a dict, got {type(data).__name__}")
    for key in ("model", "model_config"):
        if key not in data:
            raise ExportError(f"checkpoint {path} has no key {key!r} (keys: {sorted(data)})")
    kind = data.get("kind", "fusion")
    if kind != "fusion":
        raise ExportError(f"checkpoint {path} is of kind {kind!r}; only the 'fusion' estimator is exported for the device")
    try:
        cfg = ModelConfig.from_dict(data["model_config"])
    except (ValueError, TypeError) as exc:
        raise ExportError(f"checkpoint {path}: key 'model_config' is not a model config: {exc}") from exc
    model = create_pain_estimator(cfg)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as exc:
        raise ExportError(f"checkpoint {path}: key 'model' does not fit config {cfg.name!r}: {exc}") from exc
    return model.eval(), cfg


def _tensor_specs(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> tuple:
    from models.manifest import TensorSpec

    return tuple(
        TensorSpec(n, ("batch", *tensors[n].shape[1:]), str(tensors[n].detach().cpu().numpy().dtype)) for n in names
    )


def _parity_batches(cfg: "ModelConfig") -> list[dict[str, torch.Tensor]]:  # noqa: F821
    """Model inputs for the parity check: batch 1 and 3 (dynamic batch), with absent modalities and padding."""
    from models.estimator import example_inputs

    batches = [example_inputs(cfg, batch=1, seed=101), example_inputs(cfg, batch=3, seed=103)]
    presence = batches[1]["presence"]
    presence[1] = torch.tensor([0.0, 1.0, 1.0])  # no face
    presence[2] = torch.tensor([1.0, 0.0, 0.0])  # video only
    return batches


def export_model_dir(
    model: nn.Module,
    cfg: "ModelConfig",  # noqa: F821
    out_dir: str | Path,
    opset: int = 17,
    tolerance: float = PARITY_TOLERANCE,
    progress: bool = True,
    card_path: str | Path | None = None,
    checkpoint_path: str | Path | None = None,
) -> "Manifest":  # noqa: F821
    """Export the four parts of ``model`` to ``out_dir`` with estimator.pt and manifest.json.

    Every part is checked against PyTorch on ONNX Runtime at batch 1 and 3 and the four ONNX files run
    in sequence are checked against the whole estimator; any error above ``tolerance`` raises
    :class:`ExportError` and no manifest is written (a device refuses a directory without one).
    ``card_path`` (the ``model_card.json`` of ``neopain train --final``, describing ``checkpoint_path``): the
    card goes into the manifest, and it and its Markdown twin are copied beside the parts as ``model_card.json``
    and ``model_card.md`` (see :func:`check_card`).
    """
    from tqdm import tqdm

    from models.engines.cache import sha256_file
    from models.estimator import example_inputs
    from models.graphs import PART_NAMES, part_inputs, split_estimator
    from models.manifest import MANIFEST_NAME, Manifest, PartInfo, preprocessing_constants, write_manifest

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # never leave an old manifest beside new files
    model.eval()
    version = model_version(model, cfg.name)
    card = check_card(card_path, version, cfg.name, checkpoint_path) if card_path is not None else None
    parts = split_estimator(model)
    example = part_inputs(parts, example_inputs(cfg, batch=2, seed=7))
    checks = [part_inputs(parts, x) for x in _parity_batches(cfg)]
    infos: dict[str, PartInfo] = {}
    for name in tqdm(PART_NAMES, desc="export", unit="part", disable=not progress):
        part = parts[name]
        path = export_onnx(part.module, example[name], out / f"{name}.onnx", opset=opset, output_names=part.output_names)
        error = max(onnx_parity(part.module, path, x[name]) for x in checks)
        if not error < tolerance:
            raise ExportError(f"part {name}: ONNX Runtime differs from PyTorch by {error:.3g} (limit {tolerance:g}); export refused")
        with torch.no_grad():
            outputs = _as_tuple(part.module(*example[name].values()))
        infos[name] = PartInfo(
            onnx=path.name,
            sha256=sha256_file(path),
            inputs=_tensor_specs(example[name], part.input_names),
            outputs=_tensor_specs(dict(zip(part.output_names, outputs)), part.output_names),
            parity_max_abs_error=error,
        )
    end_to_end = _end_to_end_parity(model, out, infos, _parity_batches(cfg))
    if not end_to_end < tolerance:
        raise ExportError(f"the four ONNX parts in sequence differ from the estimator by {end_to_end:.3g} (limit {tolerance:g})")
    save_estimator(model, cfg, out / "estimator.pt", version)
    _copy_card(card_path, out)
    import onnx as _onnx
    import onnxruntime as _ort

    manifest = Manifest(
        model_version=version,
        config_name=cfg.name,
        config=cfg.to_dict(),
        opset=opset,
        parts=infos,
        preprocessing=preprocessing_constants(cfg),
        end_to_end_parity_max_abs_error=end_to_end,
        exporter={"torch": torch.__version__, "onnx": _onnx.__version__, "onnxruntime": _ort.__version__,
                  "exporter": "torch.onnx legacy (TorchScript)"},
        model_card=card,
    )
    write_manifest(out, manifest)
    return manifest


_WEIGHTS_VERSION = re.compile(r"^neopain-(?P<config>[A-Za-z0-9_]+)-(?P<hash>[0-9a-f]{12})$")


def check_card(card_path: str | Path, version: str, config_name: str, checkpoint: str | Path | None = None) -> dict:
    """The model card to carry, after checking that it describes these weights.

    Refused: a card of another kind than ``fusion`` or another network size; one whose ``checkpoint_sha256``
    is not the checkpoint file's (a card left beside a replaced checkpoint; checked when the card's
    ``checkpoint`` names this file, so an exported directory's ``estimator.pt`` re-exports with the card it
    carried); one whose ``model_version`` has
    the weights-hash form (``neopain-<config>-<12 hex>``, :func:`model_version`) but names other weights. Any
    other version is the trainer's own name (``fusion-<12 hex of the checkpoint file>``) and is carried as it
    is, beside the manifest's weights version.
    """
    from models.card import CardError, read_card
    from models.engines.cache import sha256_file

    try:
        card = read_card(card_path)
    except CardError as exc:
        raise ExportError(str(exc)) from None
    kind = card.get("model_kind", "fusion")
    if kind != "fusion":
        raise ExportError(f"model card {card_path}: model_kind is {kind!r}; only the 'fusion' estimator is exported")
    size = card.get("model_config")
    size = size.get("name") if isinstance(size, dict) else size
    if size is not None and size != config_name:
        raise ExportError(f"model card {card_path}: model_config {size!r} but the checkpoint holds {config_name!r}")
    recorded = card.get("checkpoint_sha256")
    names_this_file = checkpoint is not None and card.get("checkpoint", Path(checkpoint).name) == Path(checkpoint).name
    if names_this_file and isinstance(recorded, str) and recorded != (actual := sha256_file(checkpoint)):
        raise ExportError(f"model card {card_path}: checkpoint_sha256 {recorded[:12]}... but {checkpoint} is "
                          f"{actual[:12]}...: the card describes another checkpoint file")
    match = _WEIGHTS_VERSION.match(card["model_version"])
    if match and card["model_version"] != version:
        raise ExportError(f"model card {card_path}: model_version {card['model_version']!r} but the checkpoint's "
                          f"weights are {version!r}: the card describes another model")
    return card


def _copy_card(card_path: str | Path | None, out: Path) -> None:
    """The card's JSON and (when present) Markdown into the model directory; stale copies removed."""
    import shutil

    from models.card import CARD_JSON, CARD_MARKDOWN, card_markdown_path

    for name in (CARD_JSON, CARD_MARKDOWN):
        (out / name).unlink(missing_ok=True)
    if card_path is None:
        return
    shutil.copyfile(card_path, out / CARD_JSON)
    if card_markdown_path(card_path).is_file():
        shutil.copyfile(card_markdown_path(card_path), out / CARD_MARKDOWN)


def _end_to_end_parity(model: nn.Module, out: Path, infos: Mapping, batches: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Max abs error of the ONNX parts run in sequence on ORT vs the whole PyTorch estimator."""
    import onnxruntime as ort

    sessions = {n: ort.InferenceSession(str(out / info.onnx), providers=["CPUExecutionProvider"]) for n, info in infos.items()}
    worst = 0.0
    for inputs in batches:
        with torch.no_grad():
            reference = [t.numpy() for t in _as_tuple(model(**inputs))]
        values = {k: v.numpy() for k, v in inputs.items()}
        for name, session in sessions.items():
            got = session.run(list(infos[name].output_names), {n: values[n] for n in infos[name].input_names})
            values.update(zip(infos[name].output_names, got))
        for name, want in zip(infos["fusion"].output_names, reference):
            worst = max(worst, float(np.max(np.abs(values[name].astype(np.float64) - want.astype(np.float64)))))
    return worst


def add_export_arguments(parser: "argparse.ArgumentParser") -> None:  # noqa: F821
    """Arguments of ``neopain export``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="training checkpoint (kind 'fusion', from `neopain train`; "
                        "RUN/final/fusion.pt carries the model_card.json beside it into the manifest) or estimator.pt")
    source.add_argument("--random", action="store_true", help="random weights (for benchmarks and tests)")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="network size; required with --random "
                        "(a checkpoint carries its own, and must match if given)")
    parser.add_argument("--out", required=True, help="model directory to write (ONNX parts, estimator.pt, manifest.json)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 17-20 (default: 17)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --random weights")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--int8", metavar="CALIB_DIR",
                        help="also write INT8 (QDQ) parts, calibrated on CALIB_DIR: the .npz windows of `neopain "
                        "calibrate capture-int8`, or a dataset (its ratings then measure the MAE change)")
    parser.add_argument("--int8-windows", type=int, default=64, help="INT8: windows to use at most (default 64)")
    parser.add_argument("--int8-held-out", type=float, default=0.25,
                        help="INT8: share of the windows held out of calibration for the accuracy check (default 0.25)")
    parser.add_argument("--int8-max-mae-increase", type=float, default=0.05,
                        help="INT8: refuse when the MAE worsens by more than this, NIPS (default 0.05)")


def export_int8(out: str | Path, calib_dir: str | Path, *, windows: int = 64, held_out: float = 0.25,
                max_mae_increase: float = 0.05, progress: bool = True) -> "Manifest":  # noqa: F821
    """Quantize the model just exported to ``out`` on the windows in ``calib_dir`` (see :mod:`models.quantize`).

    Raises :class:`ExportError` with the reason; after a refusal the FP32 model in ``out`` stays as it was.
    """
    from models.manifest import read_manifest
    from models.quantize import QuantizationError, load_calibration_set, quantize_model_dir

    try:
        calibration = load_calibration_set(calib_dir, read_manifest(out), limit=windows)
        return quantize_model_dir(out, calibration, held_out=held_out, max_mae_increase=max_mae_increase,
                                  progress=progress)
    except QuantizationError as exc:
        raise ExportError(str(exc)) from exc
    except EngineError as exc:  # calibration files: missing, wrong shape, unreadable
        raise ExportError(str(exc)) from exc


def run_export(args: "argparse.Namespace") -> int:  # noqa: F821
    """``neopain export``: returns 0, or 1 with the reason on stderr."""
    import sys

    from models.configs import get_config
    from models.estimator import create_pain_estimator

    if not 17 <= args.opset <= 20:
        print(f"neopain export: error: --opset must be 17-20, got {args.opset}", file=sys.stderr)
        return 1
    try:
        if args.random:
            if not args.config:
                raise ExportError("--random needs --config tiny|full")
            torch.manual_seed(args.seed)
            cfg = get_config(args.config)
            model = create_pain_estimator(cfg).eval()
        else:
            model, cfg = load_estimator_checkpoint(args.checkpoint)
            if args.config and args.config != cfg.name:
                raise ExportError(f"--config {args.config} but checkpoint {args.checkpoint} holds config {cfg.name!r}")
        from models.card import card_beside

        card_path = None if args.random else card_beside(args.checkpoint)
        manifest = export_model_dir(model, cfg, args.out, opset=args.opset, progress=not args.quiet,
                                    card_path=card_path, checkpoint_path=None if args.random else args.checkpoint)
    except ExportError as exc:
        print(f"neopain export: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {manifest.model_version} to {args.out}")
    if manifest.model_card is not None:
        from models.card import summary

        print(f"  model card: {summary(manifest.model_card)}")
    for name, part in manifest.parts.items():
        print(f"  {name:15s} {part.onnx:20s} parity max abs error {part.parity_max_abs_error:.2e}")
    print(f"  end-to-end parity max abs error {manifest.end_to_end_parity_max_abs_error:.2e}")
    if not args.int8:
        return 0
    try:
        manifest = export_int8(args.out, args.int8, windows=args.int8_windows, held_out=args.int8_held_out,
                               max_mae_increase=args.int8_max_mae_increase, progress=not args.quiet)
    except ExportError as exc:
        print(f"neopain export: error: {exc}", file=sys.stderr)
        print(f"neopain export: the FP32 model in {args.out} is kept, without INT8 parts", file=sys.stderr)
        return 1
    int8 = manifest.int8
    assert int8 is not None
    print(f"INT8 (QDQ) parts, calibrated on {int8.calibration['calibration_windows']} windows of "
          f"{int8.calibration['source']} (sha256 {int8.calibration['sha256'][:12]}...):")
    for name, part in int8.parts.items():
        print(f"  {name:15s} {part.onnx or '(float)':25s} " + (f"{part.quantized_ops} Q nodes" if part.onnx else part.reason))
    from models.quantize import AccuracyCheck

    print("  accuracy: " + AccuracyCheck(**int8.accuracy).summary())
    return 0
