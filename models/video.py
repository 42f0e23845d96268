"""I3D ResNet-50 video network, built exactly like pytorchvideo's ``i3d_r50``.

Why an exact copy of pytorchvideo's module tree: the published Kinetics-400 checkpoints store their
tensors under pytorchvideo's attribute names (``blocks.0.conv.weight``,
``blocks.3.res_blocks.0.branch2.conv_b.weight``, ``blocks.6.proj.bias``, ...). Keeping the same names and
shapes lets ``models.checkpoints.i3d`` load such a checkpoint by name with no translation, and lets the
mmaction2 and ImageNet loaders translate to one well-known layout.

Layout (``blocks`` index -> pytorchvideo role):

- ``blocks.0``  stem: ``conv`` (k 5x7x7, s 1x2x2, no bias), ``norm``, ``activation``, ``pool`` (1x3x3 max)
- ``blocks.1``  res2 (ResStage of bottleneck ``res_blocks``)
- ``blocks.2``  MaxPool3d k(2,1,1) s(2,1,1) after res2 (or Identity when the config turns it off)
- ``blocks.3-5`` res3, res4, res5
- ``blocks.6``  head: ``pool`` (avg), ``dropout``, ``proj`` (Linear, only when ``num_classes > 0``),
  ``output_pool`` (global average)

The builders follow pytorchvideo's style (``create_*`` functions return plain blocks) so a block can be
reused or swapped without subclassing the whole network.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from models.configs import VideoConfig

# pytorchvideo's BatchNorm3d settings (norm_eps, norm_momentum of create_resnet).
_BN_EPS = 1e-5
_BN_MOMENTUM = 0.1
# pytorchvideo's i3d_r50 head: AvgPool3d k(4,7,7) stride 1, then a global average of the projected map.
_HEAD_POOL_T = 4
_HEAD_DROPOUT = 0.5


def _norm(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class ResNetBasicStem(nn.Module):
    """conv -> norm -> activation -> pool (pytorchvideo ``ResNetBasicStem`` attribute names)."""

    def __init__(self, conv: nn.Conv3d, norm: nn.Module, activation: nn.Module, pool: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.activation = activation
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.norm(self.conv(x))))


class BottleneckBlock(nn.Module):
    """Tx1x1 conv_a -> 1x3x3 conv_b (carries the spatial stride) -> 1x1x1 conv_c, each with BN."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, spatial_stride: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(
            dim_in, dim_inner, kernel_size=(temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False
        )
        self.norm_a = _norm(dim_inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(
            dim_inner,
            dim_inner,
            kernel_size=(1, 3, 3),
            stride=(1, spatial_stride, spatial_stride),
            padding=(0, 1, 1),
            bias=False,
        )
        self.norm_b = _norm(dim_inner)
        self.act_b = nn.ReLU()
        self.conv_c = nn.Conv3d(dim_inner, dim_out, kernel_size=1, bias=False)
        self.norm_c = _norm(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """Residual block: ``branch1`` shortcut (1x1x1 conv + BN when the shape changes) + ``branch2``, ReLU."""

    def __init__(self, branch1_conv: nn.Module | None, branch1_norm: nn.Module | None, branch2: nn.Module) -> None:
        super().__init__()
        self.branch1_conv = branch1_conv
        self.branch1_norm = branch1_norm
        self.branch2 = branch2
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(shortcut)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
        return self.activation(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """A sequence of residual blocks stored as ``res_blocks`` (pytorchvideo's name)."""

    def __init__(self, res_blocks: nn.ModuleList) -> None:
        super().__init__()
        self.res_blocks = res_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


class ResNetBasicHead(nn.Module):
    """pool -> dropout -> proj (channels-last Linear) -> global average -> (B, classes).

    Without ``proj`` (``num_classes == 0``) it returns the globally pooled (B, C) feature instead.
    """

    def __init__(self, pool: nn.Module, dropout: nn.Module | None, proj: nn.Linear | None) -> None:
        super().__init__()
        self.pool = pool
        self.dropout = dropout
        self.proj = proj
        self.output_pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.dropout is not None:
            x = self.dropout(x)
        if self.proj is not None:
            # Linear over channels at every remaining (t, h, w) position, as pytorchvideo does.
            x = self.proj(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)
        return self.output_pool(x).flatten(1)


def create_stem(cfg: VideoConfig, in_channels: int = 3) -> ResNetBasicStem:
    """Stem: Conv3d 3->stem_dim k(cfg.stem_kernel) s(stem_stride_t,2,2) 'same' padding, BN, ReLU, max pool."""
    kt, kh, kw = cfg.stem_kernel
    conv = nn.Conv3d(
        in_channels,
        cfg.stem_dim,
        kernel_size=(kt, kh, kw),
        stride=(cfg.stem_stride_t, 2, 2),
        padding=(kt // 2, kh // 2, kw // 2),
        bias=False,
    )
    pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(cfg.stem_pool_stride_t, 2, 2), padding=(0, 1, 1))
    return ResNetBasicStem(conv=conv, norm=_norm(cfg.stem_dim), activation=nn.ReLU(), pool=pool)


def create_bottleneck_block(
    dim_in: int, dim_inner: int, dim_out: int, temporal_kernel: int, spatial_stride: int
) -> ResBlock:
    """One bottleneck residual block; the shortcut gets a 1x1x1 conv + BN only when the shape changes."""
    if temporal_kernel < 1 or temporal_kernel % 2 == 0:
        raise ValueError(f"temporal_kernel must be odd and >= 1 to keep the clip length, got {temporal_kernel}")
    needs_projection = dim_in != dim_out or spatial_stride != 1
    branch1_conv = (
        nn.Conv3d(dim_in, dim_out, kernel_size=1, stride=(1, spatial_stride, spatial_stride), bias=False)
        if needs_projection
        else None
    )
    branch1_norm = _norm(dim_out) if needs_projection else None
    branch2 = BottleneckBlock(dim_in, dim_inner, dim_out, temporal_kernel, spatial_stride)
    return ResBlock(branch1_conv, branch1_norm, branch2)


def create_res_stage(
    dim_in: int, dim_inner: int, dim_out: int, temporal_kernels: tuple[int, ...], spatial_stride: int
) -> ResStage:
    """A stage of ``len(temporal_kernels)`` bottleneck blocks; the first carries the spatial stride."""
    blocks = nn.ModuleList(
        create_bottleneck_block(
            dim_in if i == 0 else dim_out, dim_inner, dim_out, kt, spatial_stride if i == 0 else 1
        )
        for i, kt in enumerate(temporal_kernels)
    )
    return ResStage(blocks)


def res5_shape(cfg: VideoConfig) -> tuple[int, int]:
    """(T', S') of the res5 map for a cfg.frames x crop x crop clip: what the head pools over."""
    t = -(-cfg.frames // cfg.stem_stride_t)  # conv stride with 'same' padding: ceil
    t = (t - 1) // cfg.stem_pool_stride_t + 1  # max pool k=1
    if cfg.pool_after_res2:
        t //= 2
    s = cfg.crop_size
    for _ in range(2 + 3):  # stem conv, stem pool, res3-5 strides; each k3/k7 'same' stride 2 -> ceil
        s = (s + 1) // 2
    return t, s


def create_head(cfg: VideoConfig, dropout: float = _HEAD_DROPOUT) -> ResNetBasicHead:
    """pytorchvideo's i3d_r50 head: AvgPool3d k(4,7,7) s1 at 16x224^2, scaled to the configured clip."""
    t, s = res5_shape(cfg)
    if t < 1 or s < 1:
        raise ValueError(f"VideoConfig frames={cfg.frames}, crop_size={cfg.crop_size} leave no res5 map (T'={t}, S'={s})")
    # Stride 1 over time as in pytorchvideo: at T'=8 the 5 overlapping windows are projected and then
    # averaged, so middle frames weigh more than edge frames in the logits (kept for checkpoint parity).
    pool = nn.AvgPool3d(kernel_size=(min(_HEAD_POOL_T, t), s, s), stride=1)
    proj = nn.Linear(cfg.feature_dim, cfg.num_classes) if cfg.num_classes > 0 else None
    return ResNetBasicHead(pool=pool, dropout=nn.Dropout(dropout) if dropout > 0 else None, proj=proj)


def _check_config(cfg: VideoConfig) -> None:
    if len(cfg.stage_depths) != 4 or len(cfg.stage_widths) != 4 or len(cfg.temporal_kernels) != 4:
        raise ValueError("VideoConfig: stage_depths, stage_widths and temporal_kernels need 4 stages (res2-res5)")
    for i, (depth, kernels) in enumerate(zip(cfg.stage_depths, cfg.temporal_kernels)):
        if len(kernels) != depth:
            raise ValueError(
                f"VideoConfig.temporal_kernels[{i}] has {len(kernels)} entries but stage_depths[{i}] = {depth}"
            )
    if cfg.num_classes < 0:
        raise ValueError(f"VideoConfig.num_classes must be >= 0, got {cfg.num_classes}")


class I3DResNet(nn.Module):
    """pytorchvideo ``Net`` for I3D-R50: ``blocks`` = stem, res2, pool, res3, res4, res5, head."""

    def __init__(self, cfg: VideoConfig, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.cfg = cfg
        self.blocks = blocks

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) normalised clip -> (B, T', C) res5 map averaged over space, kept over time."""
        for block in self.blocks[:-1]:
            x = block(x)
        # Sum / count rather than ``mean``: ReduceMean moved its axes from attribute to input in opset 18
        # and torch's dynamo exporter cannot convert that back to opset 17; ReduceSum exports to 17 with
        # both exporters, and a traced H*W keeps the legacy exporter's dynamic batch working.
        return (x.flatten(3).sum(-1) / (x.shape[3] * x.shape[4])).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) with a head, else the pooled feature (B, C)."""
        for block in self.blocks:
            x = block(x)
        return x


def create_i3d_r50(cfg: VideoConfig | None = None) -> I3DResNet:
    """Build I3D-R50 from a VideoConfig (default: pytorchvideo's Kinetics-400 ``i3d_r50``)."""
    cfg = cfg or VideoConfig()
    _check_config(cfg)
    blocks: list[nn.Module] = [create_stem(cfg)]
    dim_in = cfg.stem_dim
    for i, (width, kernels) in enumerate(zip(cfg.stage_widths, cfg.temporal_kernels)):
        dim_out = width * cfg.expansion
        blocks.append(create_res_stage(dim_in, width, dim_out, tuple(kernels), spatial_stride=1 if i == 0 else 2))
        dim_in = dim_out
        if i == 0:
            # Keeps the index of res3-5 and the head equal to pytorchvideo's (blocks.3-6) either way.
            blocks.append(
                nn.MaxPool3d(kernel_size=(2, 1, 1), stride=(2, 1, 1)) if cfg.pool_after_res2 else nn.Identity()
            )
    blocks.append(create_head(cfg))
    return I3DResNet(cfg, nn.ModuleList(blocks))


class VideoEncoder(nn.Module):
    """Fusion-facing wrapper: clip (B, 3, T, H, W), already normalised -> tokens (B, T', out_dim)."""

    def __init__(self, backbone: I3DResNet) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_dim = backbone.feature_dim

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(clip)


def create_video_encoder(cfg: VideoConfig, backbone: I3DResNet | None = None) -> VideoEncoder:
    """Video encoder of the estimator.

    The classifier is of no use to the fusion, so a fresh backbone is built without it
    (``num_classes=0``). Pass ``backbone`` (e.g. from a checkpoint loader) to wrap loaded weights; a head it
    may carry is dropped so that no parameter is left out of the gradient.
    """
    if backbone is None:
        backbone = create_i3d_r50(dataclasses.replace(cfg, num_classes=0))
    elif backbone.blocks[-1].proj is not None:
        backbone.blocks[-1].proj = None
        backbone.cfg = dataclasses.replace(backbone.cfg, num_classes=0)
    return VideoEncoder(backbone)
