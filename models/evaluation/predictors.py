"""Any trained model as a function of a SampleSet: a training checkpoint (a fold's or ``train --final``'s, of
any kind), ``estimator.pt``, or an exported model directory run through the device's engines.

Why the exported directory goes through :func:`models.engines.select.open_scoring_engines`: evaluating what
the device runs (the ONNX parts, their manifest and pre-processing checks) rather than the PyTorch module it
was exported from is the point of an external validation of a deployed model.

``--model`` accepts ``PATH`` or ``LABEL=PATH``. ``PATH`` is a checkpoint file, a folder holding
``manifest.json`` (an export), or a folder of checkpoints (``RUN/final/``: one model per ``<kind>.pt``). The
model card beside a checkpoint (or carried by an export's manifest) names the model and gives its training
median.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from models.card import card_beside, read_card, summary, training_median
from models.configs import ModelConfig
from models.estimator import BASELINES, create_baseline, create_pain_estimator
from models.export import model_version
from models.manifest import MANIFEST_NAME
from models.samples import SampleSet

KINDS = ("fusion",) + BASELINES
BATCH = 32


class ModelLoadError(ValueError):
    """A ``--model`` that is not a model: names the path and what is wrong with it."""


@dataclass
class Predictor:
    """One model to evaluate: where it came from, its network size, and how to run it."""

    label: str
    kind: str
    source: Path
    config: ModelConfig
    backend: str  # "pytorch" or the engine backend of an export
    run_batch: Callable[[dict[str, torch.Tensor]], np.ndarray] = field(repr=False)
    card: dict[str, Any] | None = None
    model_version: str | None = None  # the weights' version (models.export.model_version), as an export names it

    @property
    def training_median(self) -> float | None:
        return training_median(self.card)

    def predict(self, samples: SampleSet, batch_size: int = BATCH) -> np.ndarray:
        """NIPS per window of ``samples`` (which must be pre-processed for this model's config)."""
        out = []
        for start in range(0, len(samples), batch_size):
            inputs, _, _ = samples.batch(torch.arange(start, min(start + batch_size, len(samples))))
            out.append(np.asarray(self.run_batch(inputs), dtype=np.float64).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0)

    def describe(self) -> str:
        text = f"{self.label}: {self.kind} ({self.config.name}) from `{self.source}` on {self.backend}"
        if self.model_version:
            text += f", weights {self.model_version}"
        return text + (f"; model card: {summary(self.card)}" if self.card else "; no model card")


def _network(kind: str, cfg: ModelConfig) -> torch.nn.Module:
    return create_pain_estimator(cfg) if kind == "fusion" else create_baseline(kind, cfg)


def load_checkpoint(path: Path, label: str | None = None) -> Predictor:
    """A training checkpoint (``model``, ``model_config``, ``kind``) or ``estimator.pt``, in eval mode on the CPU."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a damaged or foreign file
        raise ModelLoadError(f"{path}: not a checkpoint torch.load can read ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or "model" not in data or "model_config" not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ModelLoadError(f"{path}: a checkpoint needs keys 'model' and 'model_config' (has {keys})")
    kind = data.get("kind", "fusion")
    if kind not in KINDS:
        raise ModelLoadError(f"{path}: key 'kind' is {kind!r}, not one of {KINDS}")
    try:
        cfg = ModelConfig.from_dict(data["model_config"])
        model = _network(kind, cfg)
        model.load_state_dict(data["model"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: the weights do not fit its model_config: {exc}") from None
    model.eval()
    card_path = card_beside(path)
    card = read_card(card_path) if card_path else None
    if card is not None and card.get("model_kind") not in (None, kind):
        card = None  # the folder's card describes another kind's checkpoint

    @torch.no_grad()
    def run(inputs: dict[str, torch.Tensor]) -> np.ndarray:
        return model(**inputs)[0].float().numpy()

    return Predictor(label or kind, kind, path, cfg, "pytorch", run, card, model_version(model, cfg.name))


def load_export(model_dir: Path, label: str | None = None) -> Predictor:
    """An exported model directory on the device's engines (ONNX Runtime on the CPU, else PyTorch)."""
    from models.engines.select import open_scoring_engines

    engines = open_scoring_engines(model_dir, order=("onnxruntime", "torch"), precision="fp32")
    card = engines.manifest.model_card

    def run(inputs: dict[str, torch.Tensor]) -> np.ndarray:
        return engines.run({k: v.numpy() for k, v in inputs.items()}).nips

    return Predictor(label or "fusion", "fusion", model_dir, engines.config, engines.backend, run,
                     card, engines.model_version)


def load_models(spec: str) -> list[Predictor]:
    """The models ``--model spec`` names (``PATH`` or ``LABEL=PATH``)."""
    label, _, path_text = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else (None, "", spec)
    path = Path(path_text)
    if path.is_file():
        return [load_checkpoint(path, label or None)]
    if not path.is_dir():
        raise ModelLoadError(f"--model {spec}: {path} is neither a checkpoint file nor a folder")
    if (path / MANIFEST_NAME).is_file():
        return [load_export(path, label or None)]
    checkpoints = sorted(path.glob("*.pt"), key=lambda p: (KINDS.index(p.stem) if p.stem in KINDS else len(KINDS), p.name))
    if not checkpoints:
        raise ModelLoadError(f"--model {spec}: {path} holds neither {MANIFEST_NAME} (an export) nor *.pt checkpoints")
    models = [load_checkpoint(p) for p in checkpoints]
    if label:
        for m in models:
            m.label = f"{label}/{m.kind}" if len(models) > 1 else label
    return models


def unique_labels(models: list[Predictor]) -> None:
    """Give every model a distinct label: a repeated one gets its source folder's name, then a number."""
    repeated = {m.label for m in models if sum(o.label == m.label for o in models) > 1}
    for m in models:
        if m.label in repeated:
            m.label = f"{m.label}@{m.source.parent.name if m.source.is_file() else m.source.name}"
    seen: dict[str, int] = {}
    for m in models:
        seen[m.label] = seen.get(m.label, 0) + 1
        if seen[m.label] > 1:
            m.label = f"{m.label}#{seen[m.label]}"
