"""Vitals encoder: a 1D-CNN over the 30 s vitals grid plus an HRV token.

Input is what :func:`models.features.vitals.build_vitals_grid` and
:meth:`models.features.vitals.HrvFeatures.normalised` produce: ``series`` (B, 4, samples) with
HR, HR-valid, SpO2, SpO2-valid channels and ``hrv`` (B, 3). The CNN halves the time axis per block
(conv1d-BN-ReLU, stride 2) so each output token summarises a few seconds, which is the time scale
of pain-related HR rises and SpO2 dips.

HRV design choice: the three HRV features are embedded by a small MLP and *prepended as their own
token* (token 0) instead of being added to every time step. Why: they describe the whole window,
not one instant, and as a separate token the fusion's attention (and its explanation) can use or
ignore them independently of the time-resolved HR/SpO2 tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from models.configs import VitalsConfig


def create_conv1d_block(in_channels: int, out_channels: int, kernel_size: int, stride: int = 2) -> nn.Sequential:
    """Conv1d (no bias: BN follows) - BatchNorm1d - ReLU, 'same'-style padding, downsampling by ``stride``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"VitalsConfig.kernel_size must be odd and positive, got {kernel_size}")
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv_output_length(samples: int, kernel_size: int, blocks: int, stride: int = 2) -> int:
    """Time steps left after ``blocks`` strided convolutions (PyTorch's floor formula)."""
    length = samples
    for _ in range(blocks):
        length = (length + 2 * (kernel_size // 2) - kernel_size) // stride + 1
    return length


class VitalsEncoder(nn.Module):
    """1D-CNN tokens of the vitals grid, with the embedded HRV features as token 0.

    forward(series (B, in_channels, samples), hrv (B, hrv_features)) -> (B, 1 + L_conv, out_dim).
    """

    def __init__(self, cfg: VitalsConfig, blocks: nn.Sequential, proj: nn.Module, hrv_embed: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = blocks
        self.proj = proj
        self.hrv_embed = hrv_embed
        self.out_dim = cfg.out_dim
        self.conv_length = conv_output_length(cfg.samples, cfg.kernel_size, len(cfg.conv_channels))
        self.num_tokens = 1 + self.conv_length
        # Learned positions: the conv keeps local order, but attention over tokens is order-blind.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, cfg.out_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, series: torch.Tensor, hrv: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if series.dim() != 3 or series.shape[1] != cfg.in_channels or series.shape[2] != cfg.samples:
            raise ValueError(
                f"vitals series must be (B, {cfg.in_channels}, {cfg.samples}), got {tuple(series.shape)}"
            )
        if hrv.dim() != 2 or hrv.shape[1] != cfg.hrv_features:
            raise ValueError(f"hrv must be (B, {cfg.hrv_features}), got {tuple(hrv.shape)}")
        x = self.blocks(series)  # (B, C, L)
        x = self.proj(x).transpose(1, 2)  # (B, L, out_dim)
        h = self.hrv_embed(hrv).unsqueeze(1)  # (B, 1, out_dim)
        tokens = torch.cat([h, x], dim=1) + self.pos_embed
        return self.dropout(tokens)


def create_vitals_encoder(cfg: VitalsConfig) -> VitalsEncoder:
    """Build the vitals encoder of ``cfg`` (conv widths ``cfg.conv_channels``, kernel ``cfg.kernel_size``)."""
    if not cfg.conv_channels:
        raise ValueError("VitalsConfig.conv_channels must name at least one block width")
    widths = (cfg.in_channels, *cfg.conv_channels)
    blocks = nn.Sequential(
        *(create_conv1d_block(c_in, c_out, cfg.kernel_size) for c_in, c_out in zip(widths[:-1], widths[1:]))
    )
    if conv_output_length(cfg.samples, cfg.kernel_size, len(cfg.conv_channels)) < 1:
        raise ValueError(f"VitalsConfig: {cfg.samples} samples are too few for {len(cfg.conv_channels)} stride-2 blocks")
    proj = nn.Conv1d(cfg.conv_channels[-1], cfg.out_dim, kernel_size=1)
    hrv_embed = nn.Sequential(
        nn.Linear(cfg.hrv_features, cfg.out_dim),
        nn.ReLU(inplace=True),
        nn.Linear(cfg.out_dim, cfg.out_dim),
    )
    return VitalsEncoder(cfg, blocks, proj, hrv_embed)
