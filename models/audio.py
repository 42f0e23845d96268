"""Audio encoder: VGGish over each 0.96 s log-Mel patch, then a small transformer over the cry.

Builders in the pytorchvideo manner: :func:`create_vggish`, :func:`create_cry_transformer` and
:func:`create_audio_encoder` take an :class:`~models.configs.AudioConfig` and nothing else, so the full
network (72.1 M-parameter VGGish, published torchvggish weights fit it) and the tiny one used by tests
are the same code at different widths.

Encoder contract (what the fusion consumes)::

    forward(patches (B, N, 96, 64) float log-Mel, pad_mask (B, N) bool, True = padding)
        -> tokens (B, N, transformer_dim)

One output token per input slot, so ``pad_mask`` is also the fusion's key mask for these tokens. Tokens
at padded slots are finite but carry no information and must be masked downstream.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.configs import AudioConfig

# Additive attention bias for padded keys. Finite (not -inf) so an fp16 engine never sees inf - inf;
# -1e4 fits fp16 (max 65504) and still makes exp() underflow to exactly 0 next to real scores.
MASK_NEG = -1.0e4
# VGGish halves time and frequency four times: 96x64 -> 6x4.
_VGGISH_DOWNSAMPLE = 16


class VGGish(nn.Module):
    """VGGish (Hershey et al. 2017) with torchvggish's module layout and key names.

    ``features``: conv3x3(p1)+ReLU at indices 0, 3, 6, 8, 11, 13 with 2x2 max pools after the 1st, 2nd,
    4th and 6th conv; ``embeddings``: Linear at 0, 2, 4 with ReLU between. The conv map (C, 6, 4) is
    permuted to channels-last before flattening because the weights come from TensorFlow (NHWC): without
    the permute the first fc would read the 12288 inputs in the wrong order.

    The 128-d embedding is the last Linear's output with no ReLU, as in the reference
    (``vggish_slim``, ``activation_fn=None``). torchvggish appends a parameter-free ReLU there; its
    checkpoints load unchanged, and ``relu(output)`` reproduces its embedding.
    """

    def __init__(self, features: nn.Sequential, embeddings: nn.Sequential, patch_shape: tuple[int, int], out_dim: int) -> None:
        super().__init__()
        self.features = features
        self.embeddings = embeddings
        self.patch_shape = patch_shape
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """(B, 1, 96, 64) or (B, 96, 64) log-Mel patches -> (B, embedding_dim)."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1 or tuple(x.shape[2:]) != self.patch_shape:
            raise ValueError(f"VGGish input must be (B, 1, {self.patch_shape[0]}, {self.patch_shape[1]}); got {tuple(x.shape)}")
        x = self.features(x)
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)


def create_vggish(cfg: AudioConfig) -> VGGish:
    """VGGish at the widths of ``cfg`` (full: 64/128/256/512 convs, 4096-wide fc, 128-d embedding)."""
    if cfg.patch_frames % _VGGISH_DOWNSAMPLE or cfg.mel_bands % _VGGISH_DOWNSAMPLE:
        raise ValueError(
            f"AudioConfig.patch_frames ({cfg.patch_frames}) and mel_bands ({cfg.mel_bands}) must be multiples of "
            f"{_VGGISH_DOWNSAMPLE} (four 2x2 max pools)"
        )
    if len(cfg.vggish_channels) != 4:
        raise ValueError(f"AudioConfig.vggish_channels must have 4 widths; got {cfg.vggish_channels}")
    c1, c2, c3, c4 = cfg.vggish_channels
    layers: list[nn.Module] = []
    in_ch = 1
    # (width, convs in the stage) -- VGG-A's first four stages; a pool closes each stage.
    for width, convs in ((c1, 1), (c2, 1), (c3, 2), (c4, 2)):
        for _ in range(convs):
            layers += [nn.Conv2d(in_ch, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    flat = c4 * (cfg.patch_frames // _VGGISH_DOWNSAMPLE) * (cfg.mel_bands // _VGGISH_DOWNSAMPLE)
    embeddings = nn.Sequential(
        nn.Linear(flat, cfg.vggish_fc),
        nn.ReLU(inplace=True),
        nn.Linear(cfg.vggish_fc, cfg.vggish_fc),
        nn.ReLU(inplace=True),
        nn.Linear(cfg.vggish_fc, cfg.embedding_dim),
    )
    return VGGish(nn.Sequential(*layers), embeddings, (cfg.patch_frames, cfg.mel_bands), cfg.embedding_dim)


class CryTransformer(nn.Module):
    """Transformer over the per-patch embeddings of one cry segment.

    Why these choices:

    * A learned CLS token is prepended at position 0 and never masked. PyTorch's attention returns NaN
      when every key of a row is masked; with the CLS key always present a row of pure padding (no cry
      heard) still gives finite tokens. The CLS output itself is dropped so the encoder keeps one token
      per input slot and ``pad_mask`` stays the fusion's key mask unchanged.
    * Padded slots are replaced by a learned pad embedding before attention, and masked as keys, so
      nothing in a padded patch can reach any output.
    * Pre-norm layers (``norm_first=True``) plus a final LayerNorm: pre-norm trains stably without
      learning-rate warm-up (Xiong et al. 2020), which matters for the small neonatal data sets this
      is fine-tuned on.
    * ``enable_nested_tensor=False``: nested tensors are an inference fast path that the ONNX exporters
      cannot trace; the padding mask is passed as a finite additive bias (:data:`MASK_NEG`).
    """

    def __init__(self, in_dim: int, dim: int, heads: int, layers: int, ff: int, dropout: float, max_patches: int) -> None:
        super().__init__()
        self.max_patches = max_patches
        self.out_dim = dim
        self.proj = nn.Linear(in_dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pad_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, max_patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pad_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=dim, nhead=heads, dim_feedforward=ff, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False)

    def forward(self, embeddings: Tensor, pad_mask: Tensor) -> Tensor:
        """(B, N, in_dim) embeddings, (B, N) bool pad mask -> (B, N, dim) tokens."""
        if embeddings.dim() != 3:
            raise ValueError(f"embeddings must be (B, N, D); got {tuple(embeddings.shape)}")
        n = embeddings.shape[1]
        if n > self.max_patches:
            raise ValueError(f"{n} patches exceed max_patches={self.max_patches}; truncate with pad_patches")
        x = self.proj(embeddings)
        x = torch.where(pad_mask.unsqueeze(-1), self.pad_token.to(x.dtype), x)
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed[:, : n + 1].to(x.dtype)
        keep_cls = torch.zeros_like(pad_mask[:, :1])
        bias = torch.cat([keep_cls, pad_mask], dim=1).to(x.dtype) * MASK_NEG
        x = self.encoder(x, src_key_padding_mask=bias)
        return x[:, 1:]


def create_cry_transformer(cfg: AudioConfig) -> CryTransformer:
    """Cry transformer mapping VGGish embeddings (``embedding_dim``) to ``transformer_dim`` tokens."""
    if cfg.transformer_dim % cfg.transformer_heads:
        raise ValueError(
            f"AudioConfig.transformer_dim ({cfg.transformer_dim}) must be divisible by transformer_heads ({cfg.transformer_heads})"
        )
    return CryTransformer(
        in_dim=cfg.embedding_dim,
        dim=cfg.transformer_dim,
        heads=cfg.transformer_heads,
        layers=cfg.transformer_layers,
        ff=cfg.transformer_ff,
        dropout=cfg.dropout,
        max_patches=cfg.max_patches,
    )


class AudioEncoder(nn.Module):
    """VGGish applied to every patch slot, then the cry transformer: the audio branch of the estimator.

    VGGish runs on padded slots too (fixed shapes for the engine); their embeddings are discarded by the
    transformer's pad embedding, so the cost is compute only, never a change in output.
    """

    def __init__(self, vggish: VGGish, cry: CryTransformer) -> None:
        super().__init__()
        self.vggish = vggish
        self.cry = cry
        self.out_dim = cry.out_dim

    def forward(self, patches: Tensor, pad_mask: Tensor) -> Tensor:
        """(B, N, 96, 64) log-Mel patches, (B, N) bool pad mask (True = padding) -> (B, N, out_dim)."""
        if patches.dim() != 4 or tuple(patches.shape[2:]) != self.vggish.patch_shape:
            raise ValueError(
                f"audio patches must be (B, N, {self.vggish.patch_shape[0]}, {self.vggish.patch_shape[1]}); got {tuple(patches.shape)}"
            )
        if pad_mask.dtype != torch.bool:
            raise ValueError(f"audio pad_mask must be bool (True = padding); got {pad_mask.dtype}")
        if pad_mask.dim() != 2 or pad_mask.shape[1] != patches.shape[1]:
            raise ValueError(f"audio pad_mask must be (B, N) = {tuple(patches.shape[:2])}; got {tuple(pad_mask.shape)}")
        b, n = patches.shape[0], patches.shape[1]
        emb = self.vggish(patches.reshape(b * n, 1, *self.vggish.patch_shape))
        return self.cry(emb.reshape(b, n, -1), pad_mask)


def create_audio_encoder(cfg: AudioConfig) -> AudioEncoder:
    """The audio encoder of the estimator: :func:`create_vggish` + :func:`create_cry_transformer`."""
    return AudioEncoder(create_vggish(cfg), create_cry_transformer(cfg))
