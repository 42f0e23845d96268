"""The pain estimator (three encoders + cross-modal fusion) and the baselines it is compared with.

Every model here has the same forward signature and outputs, so training, evaluation, export and
the device's engines treat them alike:

    forward(clip (B,3,T,H,W) normalised, audio_patches (B,N,96,64) log-Mel, audio_pad_mask bool (B,N)
            True = padding, vitals_series (B,4,samples), hrv (B,3), presence float (B,3) video/audio/
            vitals, 1 = present)
    -> (nips (B,) in [0,7], item_logits (B,13), modality_weights (B,3))

Baselines (the comparisons a reviewer expects):
* ``video`` / ``audio`` / ``vitals``: one encoder, tokens mean-pooled, a linear NIPS head
  (7*sigmoid) and a linear item head. They ignore ``presence`` (they are evaluated where their
  modality exists); their modality weights are the one-hot of their modality.
* ``early``: all three encoders, pooled features of absent modalities zeroed, concatenated with the
  presence flags -> MLP -> heads. Its modality weights are presence / number present (it learns no
  weighting, so the honest explanation is "all present inputs, equally").
"""

from __future__ import annotations

import torch
from torch import nn

from models.audio import create_audio_encoder
from models.configs import MODALITIES, NIPS_MAX, ModelConfig
from models.fusion import ITEM_LOGITS, create_fusion, create_fusion_head, masked_mean
from models.video import create_video_encoder
from models.vitals import create_vitals_encoder

INPUT_NAMES = ("clip", "audio_patches", "audio_pad_mask", "vitals_series", "hrv", "presence")
OUTPUT_NAMES = ("nips", "item_logits", "modality_weights")
BASELINES = ("video", "audio", "vitals", "early")


def audio_token_padding(tokens: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Padding mask for the audio encoder's tokens.

    The encoder may return one token per patch or prepend summary tokens (e.g. a CLS token); those
    leading extra tokens are never padding.
    """
    extra = tokens.shape[1] - pad_mask.shape[1]
    if extra < 0:
        raise ValueError(f"audio encoder returned {tokens.shape[1]} tokens for {pad_mask.shape[1]} patches")
    if extra == 0:
        return pad_mask.bool()
    lead = torch.zeros(pad_mask.shape[0], extra, dtype=torch.bool, device=pad_mask.device)
    return torch.cat([lead, pad_mask.bool()], dim=1)


class Encoders(nn.Module):
    """The three encoders run together; returns tokens and the audio token padding mask."""

    def __init__(self, video: nn.Module, audio: nn.Module, vitals: nn.Module) -> None:
        super().__init__()
        self.video = video
        self.audio = audio
        self.vitals = vitals
        self.out_dims = (video.out_dim, audio.out_dim, vitals.out_dim)

    def forward(
        self,
        clip: torch.Tensor,
        audio_patches: torch.Tensor,
        audio_pad_mask: torch.Tensor,
        vitals_series: torch.Tensor,
        hrv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        video_tokens = self.video(clip)
        audio_tokens = self.audio(audio_patches, audio_pad_mask.bool())
        vitals_tokens = self.vitals(vitals_series, hrv)
        return video_tokens, audio_tokens, audio_token_padding(audio_tokens, audio_pad_mask), vitals_tokens


def create_encoders(cfg: ModelConfig) -> Encoders:
    return Encoders(
        create_video_encoder(cfg.video), create_audio_encoder(cfg.audio), create_vitals_encoder(cfg.vitals)
    )


def _check_presence(presence: torch.Tensor) -> None:
    if presence.dim() != 2 or presence.shape[1] != len(MODALITIES):
        raise ValueError(f"presence must be (B, {len(MODALITIES)}) in order {MODALITIES}, got {tuple(presence.shape)}")


class PainEstimator(nn.Module):
    """Encoders + cross-modal fusion: the model the appliance runs."""

    def __init__(self, cfg: ModelConfig, encoders: Encoders, fusion: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoders = encoders
        self.fusion = fusion

    def forward(
        self,
        clip: torch.Tensor,
        audio_patches: torch.Tensor,
        audio_pad_mask: torch.Tensor,
        vitals_series: torch.Tensor,
        hrv: torch.Tensor,
        presence: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_presence(presence)
        video, audio, audio_mask, vitals = self.encoders(clip, audio_patches, audio_pad_mask, vitals_series, hrv)
        return self.fusion(video, audio, audio_mask, vitals, presence)


def create_pain_estimator(cfg: ModelConfig) -> PainEstimator:
    """Build the full estimator of ``cfg`` (``full_config()`` for the device, ``tiny_config()`` for tests)."""
    encoders = create_encoders(cfg)
    fusion = create_fusion(cfg, *encoders.out_dims)
    return PainEstimator(cfg, encoders, fusion)


class UnimodalBaseline(nn.Module):
    """One encoder's mean-pooled tokens -> linear NIPS (7*sigmoid) and item heads."""

    def __init__(self, modality: str, encoder: nn.Module, dropout: float) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; choose one of {MODALITIES}")
        self.modality = modality
        self.index = MODALITIES.index(modality)
        self.encoder = encoder
        self.norm = nn.LayerNorm(encoder.out_dim)
        self.dropout = nn.Dropout(dropout)
        self.nips_head = nn.Linear(encoder.out_dim, 1)
        self.item_head = nn.Linear(encoder.out_dim, ITEM_LOGITS)
        one_hot = torch.zeros(1, len(MODALITIES))
        one_hot[0, self.index] = 1.0
        self.register_buffer("one_hot", one_hot, persistent=False)

    def forward(
        self,
        clip: torch.Tensor,
        audio_patches: torch.Tensor,
        audio_pad_mask: torch.Tensor,
        vitals_series: torch.Tensor,
        hrv: torch.Tensor,
        presence: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_presence(presence)
        if self.modality == "video":
            pooled = self.encoder(clip).mean(dim=1)
        elif self.modality == "audio":
            tokens = self.encoder(audio_patches, audio_pad_mask.bool())
            pad = audio_token_padding(tokens, audio_pad_mask)
            pooled = masked_mean(tokens, (~pad).to(tokens.dtype))
        else:
            pooled = self.encoder(vitals_series, hrv).mean(dim=1)
        h = self.dropout(self.norm(pooled))
        nips = NIPS_MAX * torch.sigmoid(self.nips_head(h)).squeeze(-1)
        weights = self.one_hot.to(presence.dtype).expand(presence.shape[0], -1)
        return nips, self.item_head(h), weights


class EarlyFusionBaseline(nn.Module):
    """Concatenated pooled features (absent ones zeroed) + presence flags -> MLP -> heads."""

    def __init__(self, encoders: Encoders, hidden: int, dropout: float) -> None:
        super().__init__()
        self.encoders = encoders
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in encoders.out_dims)
        # The fusion model's head builder: both compare at equal head capacity.
        self.mlp = create_fusion_head(sum(encoders.out_dims) + len(MODALITIES), hidden, dropout)
        self.nips_head = nn.Linear(hidden, 1)
        self.item_head = nn.Linear(hidden, ITEM_LOGITS)

    def forward(
        self,
        clip: torch.Tensor,
        audio_patches: torch.Tensor,
        audio_pad_mask: torch.Tensor,
        vitals_series: torch.Tensor,
        hrv: torch.Tensor,
        presence: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_presence(presence)
        presence = (presence > 0.5).to(hrv.dtype)
        video, audio, audio_mask, vitals = self.encoders(clip, audio_patches, audio_pad_mask, vitals_series, hrv)
        pooled = (
            video.mean(dim=1),
            masked_mean(audio, (~audio_mask).to(audio.dtype)),
            vitals.mean(dim=1),
        )
        features = []
        for m, feature in enumerate(pooled):
            feature = self.norms[m](feature)
            present = presence[:, m : m + 1] > 0.5
            features.append(torch.where(present, feature, torch.zeros_like(feature)))
        h = self.mlp(torch.cat([*features, presence], dim=1))
        nips = NIPS_MAX * torch.sigmoid(self.nips_head(h)).squeeze(-1)
        weights = presence / presence.sum(dim=1, keepdim=True).clamp(min=1.0)
        return nips, self.item_head(h), weights


def create_baseline(kind: str, cfg: ModelConfig) -> nn.Module:
    """Baseline ``kind`` in ("video", "audio", "vitals", "early"), same forward as the estimator."""
    if kind == "video":
        return UnimodalBaseline("video", create_video_encoder(cfg.video), cfg.fusion.dropout)
    if kind == "audio":
        return UnimodalBaseline("audio", create_audio_encoder(cfg.audio), cfg.fusion.dropout)
    if kind == "vitals":
        return UnimodalBaseline("vitals", create_vitals_encoder(cfg.vitals), cfg.fusion.dropout)
    if kind == "early":
        return EarlyFusionBaseline(create_encoders(cfg), cfg.fusion.dim, cfg.fusion.dropout)
    raise ValueError(f"unknown baseline kind {kind!r}; choose one of {BASELINES}")


def example_inputs(cfg: ModelConfig, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of the right shapes and dtypes, in forward order (for tests and export).

    Row ``i`` pads its last ``i % max_patches`` audio patches, so batches > 1 exercise padding;
    validity channels of the vitals grid are 0/1 like real ones; every modality is present.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    g = torch.Generator().manual_seed(seed)
    v, a, t = cfg.video, cfg.audio, cfg.vitals
    pad = torch.zeros(batch, a.max_patches, dtype=torch.bool)
    for i in range(batch):
        n = i % a.max_patches
        if n:
            pad[i, a.max_patches - n :] = True
    series = torch.randn(batch, t.in_channels, t.samples, generator=g)
    if t.in_channels == 4:
        series[:, 1::2] = (torch.rand(batch, 2, t.samples, generator=g) > 0.1).float()
    return {
        "clip": torch.randn(batch, 3, v.frames, v.crop_size, v.crop_size, generator=g),
        "audio_patches": torch.randn(batch, a.max_patches, a.patch_frames, a.mel_bands, generator=g) - 2.0,
        "audio_pad_mask": pad,
        "vitals_series": series,
        "hrv": torch.randn(batch, t.hrv_features, generator=g),
        "presence": torch.ones(batch, len(MODALITIES)),
    }
