"""Frozen-encoder feature cache: each window's I3D / VGGish output computed once, kept on disk.

Why: while the pretrained encoders are frozen their output for a window never changes, and they are nearly
all of the compute (full I3D-R50: 56.8 GMAC per 16x224² clip; VGGish 0.86 GMAC per patch, 8 patches; the
fusion head and the small encoders trained on top are a few hundred MMAC). Computing them once turns an
epoch of the full-size model from hours of CPU into seconds, so the heads can be trained on a small machine.

The key of an entry is two hashes, so a stale entry can never be read:

* the encoder: sha256 of its architecture (``repr`` of the module: layer types, kernels, strides, paddings)
  and of every tensor of its state dict (name, dtype, shape, bytes). A changed checkpoint, another config
  or a fine-tuned encoder is another folder (``<cache>/<video|audio>-<16 hex>/``);
* the window: sha256 of the encoder's input tensor of that window (the normalised clip, or the log-Mel
  patches), so the same window pre-processed differently is another entry and identical inputs (e.g. the
  zero clip of every window without a face) share one.

Entries are float32 tensors, exactly what the encoder returned (no lossy compression: training on the
cache is training on the encoder), one small file per window written atomically; under ``torchrun``
process 0 computes and writes and the others read after a barrier. The cache is a pure speed-up: a model
whose encoder weights hash to no cached folder, or ``--no-feature-cache``, runs the encoder instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.samples import SampleSet
from models.training.distributed import Distributed
from models.training.parts import PART_NAMES, Part, swap_module

# The encoder input each part reads, and the input it replaces in a cached SampleSet.
PART_INPUT = {"video": "clip", "audio": "audio_patches"}
KEY_COLUMN = "feature_key_{}"
HASH_HEX = 16  # folder name: 64 bits of the encoder hash; the full hash is in meta.json
ENTRY_HEX = 32
BUILD_BATCH = 8


def module_sha256(module: nn.Module) -> str:
    """sha256 of a module's architecture and weights (see the module docstring)."""
    digest = hashlib.sha256(repr(module).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def window_keys(samples: SampleSet, modality: str) -> np.ndarray:
    """sha256 (hex) of each window's ``modality`` encoder input; kept in ``samples.extra`` so subsets share it."""
    column = KEY_COLUMN.format(modality)
    if column not in samples.extra:
        rows = samples.inputs[PART_INPUT[modality]]
        samples.extra[column] = np.array(
            [hashlib.sha256(rows[i].contiguous().numpy().tobytes()).hexdigest() for i in range(len(samples))], dtype=str
        )
    return samples.extra[column]


class PrecomputedI3D(nn.Module):
    """Stands in for the I3D backbone: its "clip" input already is the res5 tokens (B, T', C)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PrecomputedVGGish(nn.Module):
    """Stands in for VGGish: the audio encoder passes each slot's cached embedding, shaped (E, 1) as a
    "patch" so the encoder's own shape checks and reshapes apply unchanged."""

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.patch_shape = (embedding_dim, 1)
        self.out_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)


def _run_encoder(modality: str, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    if modality == "video":
        return module.forward_features(inputs)
    b, n = inputs.shape[:2]
    return module(inputs.reshape(b * n, 1, *inputs.shape[2:])).reshape(b, n, -1)


class FeatureCache:
    """Encoder outputs per (encoder hash, window input hash), on disk under ``root`` and in memory."""

    def __init__(self, root: str | Path, dist: Distributed | None = None, progress: bool = True) -> None:
        self.root = Path(root)
        self.dist = dist or Distributed()
        self.progress = progress
        self._memory: dict[str, dict[str, torch.Tensor]] = {}
        self.computed = 0  # entries this process computed (for logs and tests)
        self.read = 0  # entries read from disk
        self.log: Callable[[str], None] = lambda text: None  # the run's log (set by the command)

    def folder(self, modality: str, encoder_hash: str) -> Path:
        return self.root / f"{modality}-{encoder_hash[:HASH_HEX]}"

    def has_encoder(self, modality: str, encoder_hash: str) -> bool:
        return (self.folder(modality, encoder_hash) / "meta.json").is_file()

    def features(self, part: Part, samples: SampleSet, encoder_hash: str | None = None) -> torch.Tensor:
        """(N, ...) outputs of the frozen ``part`` for every window of ``samples``, computing missing ones.

        Every process must call this at the same point (one barrier under torchrun).
        """
        encoder_hash = encoder_hash or module_sha256(part.module)
        folder = self.folder(part.modality, encoder_hash)
        memory = self._memory.setdefault(encoder_hash, {})
        keys = window_keys(samples, part.modality)
        wanted = list(dict.fromkeys(k for k in keys if k not in memory))
        if self.dist.is_main:
            on_disk = [k for k in wanted if (folder / f"{k[:ENTRY_HEX]}.pt").is_file()]
            missing = [k for k in wanted if k not in set(on_disk)]
            if missing:
                self._compute(part, samples, keys, missing, folder, encoder_hash, memory)
            self._load(on_disk, folder, memory, part.modality)
        self.dist.barrier()
        if not self.dist.is_main:
            self._load(wanted, folder, memory, part.modality)
        return torch.stack([memory[k] for k in keys]) if len(keys) else torch.zeros(0)

    def _load(self, keys: list[str], folder: Path, memory: dict[str, torch.Tensor], modality: str) -> None:
        for key in tqdm(keys, desc=f"reading cached {PART_NAMES[modality]} features", unit="window",
                        disable=not self.progress or len(keys) < 100, leave=False):
            memory[key] = torch.load(folder / f"{key[:ENTRY_HEX]}.pt", map_location="cpu", weights_only=True)
            self.read += 1

    @torch.no_grad()
    def _compute(self, part: Part, samples: SampleSet, keys: np.ndarray, missing: list[str], folder: Path,
                 encoder_hash: str, memory: dict[str, torch.Tensor]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if not meta.is_file():
            _atomic_text(meta, json.dumps({"modality": part.modality, "encoder": type(part.module).__name__,
                                           "encoder_sha256": encoder_hash, "dtype": "float32"}, indent=1))
        first_row = {k: i for i, k in reversed(list(enumerate(keys)))}
        rows = [first_row[k] for k in missing]
        source = samples.inputs[PART_INPUT[part.modality]]
        device = next(part.module.parameters()).device
        was_training = part.module.training
        part.module.eval()
        started = time.perf_counter()
        try:
            bar = tqdm(total=len(rows), desc=f"caching frozen {PART_NAMES[part.modality]} features", unit="window",
                       disable=not self.progress)
            for start in range(0, len(rows), BUILD_BATCH):
                chunk = rows[start : start + BUILD_BATCH]
                out = _run_encoder(part.modality, part.module, source[chunk].to(device)).float().cpu()
                for row, value in zip(chunk, out):
                    key = str(keys[row])
                    value = value.clone()
                    _atomic_save(value, folder / f"{key[:ENTRY_HEX]}.pt")
                    memory[key] = value
                    self.computed += 1
                bar.update(len(chunk))
            bar.close()
        finally:
            part.module.train(was_training)
        self.log(f"feature cache: {len(rows)} windows of frozen {PART_NAMES[part.modality]} features computed in "
                 f"{time.perf_counter() - started:.1f} s into {folder}")


def cached_samples(samples: SampleSet, features: dict[str, torch.Tensor]) -> SampleSet:
    """``samples`` with each cached modality's encoder input replaced by the encoder's output."""
    inputs = dict(samples.inputs)
    for modality, value in features.items():
        inputs[PART_INPUT[modality]] = value.unsqueeze(-1) if modality == "audio" else value
    return dataclasses.replace(samples, inputs=inputs, extra=dict(samples.extra))


def stand_in(part: Part) -> nn.Module:
    if part.modality == "video":
        return PrecomputedI3D()
    return PrecomputedVGGish(part.module.out_dim)


@contextlib.contextmanager
def encoders_replaced(model: nn.Module, parts: dict[str, Part]) -> Iterator[nn.Module]:
    """``model`` with the given frozen encoders swapped for stand-ins that pass cached outputs through.

    The originals are put back on exit (also on error), so checkpoints are always saved from the whole model.
    """
    originals = {}
    try:
        for modality, part in parts.items():
            originals[modality] = swap_module(model, part.path, stand_in(part))
        yield model
    finally:
        for modality, module in originals.items():
            swap_module(model, parts[modality].path, module)


def _atomic_save(value: torch.Tensor, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
