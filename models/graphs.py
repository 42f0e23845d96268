"""The four exportable parts of a :class:`~models.estimator.PainEstimator`, with fixed tensor names.

Why split the estimator: the appliance runs each encoder and the fusion head as its own engine. One
graph per encoder keeps each ONNX file small enough for TensorRT to tune on a Jetson, lets the
benchmark time each network separately, and lets a TensorRT build fall back per part (an INT8 video
encoder beside an FP16 fusion head). The names below are the contract between export, manifest and
runtime: an engine is fed by name, never by position.

Running the parts in :data:`PART_NAMES` order, each fed from the model inputs and the earlier parts'
outputs (:func:`run_parts`), gives exactly the PainEstimator's outputs (tested).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch
from torch import nn

from models.estimator import INPUT_NAMES, OUTPUT_NAMES, PainEstimator, audio_token_padding

PART_NAMES = ("video_encoder", "audio_encoder", "vitals_encoder", "fusion")

VIDEO_INPUTS = ("clip",)
VIDEO_OUTPUTS = ("video_tokens",)
AUDIO_INPUTS = ("audio_patches", "audio_pad_mask")
AUDIO_OUTPUTS = ("audio_tokens", "audio_token_mask")
VITALS_INPUTS = ("vitals_series", "hrv")
VITALS_OUTPUTS = ("vitals_tokens",)
FUSION_INPUTS = ("video_tokens", "audio_tokens", "audio_token_mask", "vitals_tokens", "presence")
FUSION_OUTPUTS = OUTPUT_NAMES  # nips, item_logits, modality_weights


class Part(NamedTuple):
    """One exportable graph: the module and the names of its inputs and outputs, in forward order."""

    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


class VideoEncoderGraph(nn.Module):
    """clip (B,3,T,H,W) normalised -> video_tokens (B,Tv,Dv)."""

    def __init__(self, video: nn.Module) -> None:
        super().__init__()
        self.video = video

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.video(clip)


class AudioEncoderGraph(nn.Module):
    """audio_patches (B,N,96,64), audio_pad_mask bool (B,N) -> audio_tokens, audio_token_mask bool.

    The token mask is computed here, inside the graph, so that a future encoder with a summary token
    (more tokens than patches) changes this graph only, never the runtime.
    """

    def __init__(self, audio: nn.Module) -> None:
        super().__init__()
        self.audio = audio

    def forward(self, audio_patches: torch.Tensor, audio_pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = audio_pad_mask.bool()
        tokens = self.audio(audio_patches, pad)
        return tokens, audio_token_padding(tokens, pad)


class VitalsEncoderGraph(nn.Module):
    """vitals_series (B,4,samples), hrv (B,3) -> vitals_tokens (B,Lv,Dt)."""

    def __init__(self, vitals: nn.Module) -> None:
        super().__init__()
        self.vitals = vitals

    def forward(self, vitals_series: torch.Tensor, hrv: torch.Tensor) -> torch.Tensor:
        return self.vitals(vitals_series, hrv)


class FusionGraph(nn.Module):
    """Tokens of the three encoders + presence (B,3) -> nips (B,), item_logits (B,13), modality_weights (B,3)."""

    def __init__(self, fusion: nn.Module) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(
        self,
        video_tokens: torch.Tensor,
        audio_tokens: torch.Tensor,
        audio_token_mask: torch.Tensor,
        vitals_tokens: torch.Tensor,
        presence: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.fusion(video_tokens, audio_tokens, audio_token_mask.bool(), vitals_tokens, presence)


def split_estimator(model: PainEstimator) -> dict[str, Part]:
    """The four parts of ``model`` in run order; they share (do not copy) the estimator's weights."""
    if not isinstance(model, PainEstimator):
        raise TypeError(f"split_estimator needs a PainEstimator (encoders + fusion), got {type(model).__name__}")
    enc = model.encoders
    parts = {
        "video_encoder": Part(VideoEncoderGraph(enc.video), VIDEO_INPUTS, VIDEO_OUTPUTS),
        "audio_encoder": Part(AudioEncoderGraph(enc.audio), AUDIO_INPUTS, AUDIO_OUTPUTS),
        "vitals_encoder": Part(VitalsEncoderGraph(enc.vitals), VITALS_INPUTS, VITALS_OUTPUTS),
        "fusion": Part(FusionGraph(model.fusion), FUSION_INPUTS, FUSION_OUTPUTS),
    }
    # A new wrapper starts in training mode; code that saves and restores a wrapper's flag (export,
    # run_parts) would then switch the shared estimator into training mode. Inherit the model's flag
    # (on the wrapper only, not recursively, so the wrapped modules keep their own flags).
    for part in parts.values():
        part.module.training = model.training
    return parts


def _as_tuple(outputs: object) -> tuple[torch.Tensor, ...]:
    return (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)  # type: ignore[arg-type]


@torch.no_grad()
def run_parts(parts: Mapping[str, Part], inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run ``parts`` in order in PyTorch; returns every intermediate and final tensor by name.

    Each part takes its inputs from ``inputs`` and the earlier parts' outputs, exactly as the engine
    runtime does, so the intermediate tensors here are the fusion head's calibration/parity inputs.
    """
    missing = [n for n in INPUT_NAMES if n not in inputs]
    if missing:
        raise ValueError(f"run_parts: model inputs {missing} missing (given {sorted(inputs)})")
    values: dict[str, torch.Tensor] = dict(inputs)
    for name, part in parts.items():
        was_training = part.module.training
        part.module.eval()
        try:
            outputs = _as_tuple(part.module(*(values[n] for n in part.input_names)))
        finally:
            part.module.train(was_training)
        if len(outputs) != len(part.output_names):
            raise ValueError(f"part {name} returned {len(outputs)} outputs, declared {list(part.output_names)}")
        values.update(zip(part.output_names, outputs))
    return values


def part_inputs(parts: Mapping[str, Part], inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Each part's own inputs (by name) for the model ``inputs``: what export and parity feed each graph."""
    values = run_parts(parts, inputs)
    return {name: {n: values[n] for n in part.input_names} for name, part in parts.items()}
