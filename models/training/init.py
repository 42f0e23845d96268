"""Initialising the encoders from published checkpoints (``--init-video`` / ``--init-audio``).

Each file is read once, its format detected from its keys (or taken from ``--init-*-format``), translated by
the loaders of :mod:`models.checkpoints` into our key names and checked against the chosen network size,
before any data is loaded: a checkpoint that does not fit stops the command at once, naming the first key
and both shapes. The loaded weights are then copied into every model kind that owns that encoder (the
fusion model, the early-fusion baseline, and the unimodal baseline of that modality), for every fold and
the final model. The video family also sets the video pre-processing and strides it was trained with
(:func:`models.checkpoints.formats.adopt_video_family`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.checkpoints import read_checkpoint
from models.checkpoints.formats import (
    AUTO,
    adopt_video_family,
    detect_audio_format,
    detect_video_format,
    load_audio_checkpoint,
    load_video_checkpoint,
)
from models.configs import ModelConfig
from models.engines.cache import sha256_file
from models.training.parts import pretrained_parts


@dataclass
class InitCheckpoint:
    """One loaded init checkpoint: where it came from, what the load did, and the weights in our names."""

    modality: str
    path: str
    format: str
    sha256: str
    loaded: int
    missing: list[str]
    unexpected: list[str]
    state: dict[str, torch.Tensor] = field(repr=False)

    def report(self) -> dict:
        """The JSON form (``init_report.json``, the model card): everything but the tensors."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "state"}

    def summary(self) -> str:
        extra = f", unexpected {len(self.unexpected)} ({', '.join(self.unexpected[:4])}{' ...' if len(self.unexpected) > 4 else ''})" if self.unexpected else ""
        missing = f", missing {len(self.missing)} ({', '.join(self.missing[:4])})" if self.missing else ""
        return f"--init-{self.modality} {self.path} ({self.format}, sha256 {self.sha256[:12]}): loaded {self.loaded} tensors{missing}{extra}"


def load_init_checkpoints(cfg: ModelConfig, video: str | None = None, video_format: str = AUTO,
                          audio: str | None = None, audio_format: str = AUTO) -> tuple[ModelConfig, list[InitCheckpoint]]:
    """Read, detect, translate and check the init checkpoints against ``cfg``.

    Returns the config to train (``cfg`` with the video family's strides and normalisation when a video
    checkpoint is given) and the loaded checkpoints. Raises :class:`models.checkpoints.CheckpointError`
    naming the file and the offending key.
    """
    inits: list[InitCheckpoint] = []
    if video:
        obj = read_checkpoint(video)
        fmt = detect_video_format(obj, str(video)) if video_format == AUTO else video_format
        cfg = dataclasses.replace(cfg, video=adopt_video_family(fmt, cfg.video))
        module, report = _located(lambda: load_video_checkpoint(obj, fmt, cfg.video), video, fmt)
        inits.append(InitCheckpoint("video", str(Path(video).resolve()), fmt, sha256_file(video), report.loaded, report.missing,
                                    report.unexpected, module.state_dict()))
    if audio:
        obj = read_checkpoint(audio)
        fmt = detect_audio_format(obj, str(audio)) if audio_format == AUTO else audio_format
        module, report = _located(lambda: load_audio_checkpoint(obj, fmt, cfg.audio), audio, fmt)
        inits.append(InitCheckpoint("audio", str(Path(audio).resolve()), fmt, sha256_file(audio), report.loaded, report.missing,
                                    report.unexpected, module.state_dict()))
    return cfg, inits


def _located(load, path: str, fmt: str):
    """Run a loader; its error gains the file and the format (the loaders see an already-read dict)."""
    from models.checkpoints import CheckpointError

    try:
        return load()
    except CheckpointError as exc:
        raise CheckpointError(f"{path} ({fmt}): {exc}") from None


def apply_init(model: nn.Module, inits: list[InitCheckpoint]) -> list[str]:
    """Copy each init checkpoint into the matching pretrained encoder of ``model``; returns the modalities filled."""
    parts = pretrained_parts(model)
    filled = []
    for init in inits:
        if init.modality in parts:
            parts[init.modality].module.load_state_dict(init.state, strict=True)
            filled.append(init.modality)
    return filled
