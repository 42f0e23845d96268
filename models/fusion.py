"""MulT-style cross-modal attention fusion and the NIPS heads.

Tsai et al. 2019 (MulT): for every ordered pair (source -> target) of modalities, a stack of
cross-modal blocks lets the target's tokens query the source's tokens (query from the target, key and
value from the source), so modalities sampled at different rates need no temporal alignment. Here
each target attends to each of the other two modalities; the two results are concatenated,
projected and pooled into one vector per modality.

Missing modalities are the normal case at the bedside (face hidden, no cry, monitor unplugged),
so presence is handled explicitly and *exactly*:

* The tokens of an absent modality (and padded audio patches) are replaced by zeros with
  ``torch.where`` before anything else, so their content (even NaN) cannot reach the outputs.
* Each source gets a learned always-present "null" token prepended to its keys. Keys of absent
  modalities and audio padding are masked; the null token never is, so no attention row is fully
  masked (``nn.MultiheadAttention`` returns NaN for a fully masked row) and "nothing to see"
  has a learned meaning.
* Masks are finite additive ``-1e4`` (``MASK_VALUE``), not ``-inf``: safe in fp16 engines and never
  ``inf - inf``; in fp32 ``exp(-1e4)`` underflows to exactly 0.
* Modality weights are a softmax of a learned per-modality score over the *present* modalities;
  absent ones get weight exactly 0. They are returned so that the appliance can explain a score.

The head sees two paths per modality, concatenated with the presence flags:

* the **unimodal path**: the encoder's own tokens, mean-pooled (padding and absent modalities excluded) and
  layer-normed -- exactly what the early-fusion baseline feeds its head;
* the **cross-modal path**: MulT's pooled cross-modal output of that modality as target (concatenated per
  modality, not averaged: averaging forced the three streams into one space and let one cancel another).

Why both: with the cross-modal path alone, every feature the head saw had gone through a per-token
projection + LayerNorm, attention and a second LayerNorm before pooling. Per-token LayerNorm removes each
token's overall activation level, which is where much of the encoders' intensity signal sits, and the
head had to re-learn it through attention. Measured on the CI cohort (24 synthetic infants, 3 subject-wise
folds, tiny config, 12 epochs, seed 0): MAE 1.806 without the unimodal path, 1.241 with it (early fusion
1.234). On the larger 36-infant benchmark (20 epochs) the two designs are within seed noise of each other
(seeds 0/1: 1.041/1.242 with it, 0.930/1.292 without) and early fusion is ahead of both (0.958/1.029), so
the cross-modal attention has not yet shown a gain on the synthetic cohort. Keeping the unimodal
path makes the model early fusion *plus* cross-modal attention, so attention can only add what the pooled
features lack (who-cries-while-grimacing timing, a modality to discount).

The modality weights *gate the cross-modal path*: each modality's cross-modal vector is multiplied by
``weight * n_present`` (1 for every present modality when the weights are uniform, exactly 0 when absent).
The unimodal path is not gated (gating it too cost 0.13 MAE in the same measurement: 1.378 vs 1.244), so
the weights explain how the cross-modal evidence was weighed, not the whole score; absent modalities
contribute exactly nothing on either path.

Outputs: NIPS = 7 * sigmoid(linear(head)) in [0, 7]; item logits (B, 13) = the six NIPS items'
classes concatenated in ``NIPS_ITEMS`` order.
"""

from __future__ import annotations

import torch
from torch import nn

from models.configs import MODALITIES, NIPS_ITEMS, NIPS_MAX, ModelConfig

MASK_VALUE = -1.0e4
ITEM_LOGITS = sum(classes for _, classes in NIPS_ITEMS)


def masked_mean(tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over tokens where ``keep`` (B, L) is 1; a row with nothing kept gives zeros (not NaN)."""
    keep = keep.to(tokens.dtype).unsqueeze(-1)
    total = (tokens * keep).sum(dim=1)
    count = keep.sum(dim=1).clamp(min=1.0)
    return total / count


def modality_dropout(presence: torch.Tensor, p: float) -> torch.Tensor:
    """Hide each present modality with chance ``p``, never all of a row's present modalities.

    Why: trains the fusion for the bedside, where any modality may be missing. A row whose every
    present modality was drawn for dropping keeps its original presence.
    """
    if p <= 0.0:
        return presence
    keep = (torch.rand_like(presence) >= p).to(presence.dtype) * presence
    emptied = (keep.sum(dim=1, keepdim=True) == 0) & (presence.sum(dim=1, keepdim=True) > 0)
    return torch.where(emptied, presence, keep)


class CrossModalBlock(nn.Module):
    """One pre-norm cross-modal transformer block: target queries source, then a feed-forward."""

    def __init__(self, dim: int, heads: int, dropout: float, ff_mult: int = 4) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"FusionConfig.dim ({dim}) must be divisible by FusionConfig.heads ({heads})")
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * dim, dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, target: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """``source_mask``: float (B, S) additive mask, 0 to attend and ``MASK_VALUE`` to ignore."""
        q = self.norm_q(target)
        kv = self.norm_kv(source)
        attended, _ = self.attn(q, kv, kv, key_padding_mask=source_mask, need_weights=False)
        x = target + self.dropout(attended)
        return x + self.dropout(self.ff(self.norm_ff(x)))


def create_cross_modal_block(dim: int, heads: int, dropout: float = 0.1) -> CrossModalBlock:
    """Builder for one cross-modal block (pytorchvideo-style ``create_*``)."""
    return CrossModalBlock(dim, heads, dropout)


class CrossModalStack(nn.Module):
    """``layers`` cross-modal blocks for one (source -> target) pair; the source stays fixed (as in MulT)."""

    def __init__(self, blocks: list[CrossModalBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, target: torch.Tensor, source: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            target = block(target, source, source_mask)
        return target


class CrossModalFusion(nn.Module):
    """Presence-aware cross-modal fusion of video, audio and vitals tokens into NIPS outputs.

    forward(video_tokens (B,Tv,Dv), audio_tokens (B,Na,Da), audio_pad_mask bool (B,Na) True = pad,
    vitals_tokens (B,Lv,Dt), presence float (B,3) video/audio/vitals 1 = present)
    -> (nips (B,) in [0,7], item_logits (B,13), modality_weights (B,3)).
    """

    def __init__(
        self,
        input_dims: tuple[int, int, int],
        dim: int,
        stacks: nn.ModuleDict,
        modality_dropout_p: float,
        item_logits: bool,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.input_dims = input_dims
        self.dim = dim
        self.modality_dropout_p = modality_dropout_p
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim)) for d in input_dims)
        # Learned always-present key/value token per modality (see module docstring).
        self.null_tokens = nn.Parameter(torch.zeros(len(MODALITIES), 1, dim))
        nn.init.trunc_normal_(self.null_tokens, std=0.02)
        self.stacks = stacks  # keys "source_to_target"
        self.merge = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in MODALITIES)
        self.out_norm = nn.ModuleList(nn.LayerNorm(dim) for _ in MODALITIES)
        self.score = nn.ModuleList(nn.Linear(dim, 1) for _ in MODALITIES)
        # Unimodal path: pooled encoder tokens, layer-normed (as the early-fusion baseline sees them).
        self.unimodal_norm = nn.ModuleList(nn.LayerNorm(d) for d in input_dims)
        self.head = create_fusion_head(sum(input_dims) + len(MODALITIES) * dim + len(MODALITIES), dim, dropout)
        self.nips_head = nn.Linear(dim, 1)
        self.item_head = nn.Linear(dim, ITEM_LOGITS) if item_logits else None

    def _check(self, name: str, tokens: torch.Tensor, dim: int) -> None:
        if tokens.dim() != 3 or tokens.shape[2] != dim:
            raise ValueError(f"{name} must be (B, L, {dim}), got {tuple(tokens.shape)}")

    def forward(
        self,
        video_tokens: torch.Tensor,
        audio_tokens: torch.Tensor,
        audio_pad_mask: torch.Tensor,
        vitals_tokens: torch.Tensor,
        presence: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for name, tokens, dim in zip(
            ("video_tokens", "audio_tokens", "vitals_tokens"), (video_tokens, audio_tokens, vitals_tokens), self.input_dims
        ):
            self._check(name, tokens, dim)
        if audio_pad_mask.dim() != 2 or audio_pad_mask.shape[1] != audio_tokens.shape[1]:
            raise ValueError(
                f"audio_pad_mask must be (B, {audio_tokens.shape[1]}) to match audio_tokens, got {tuple(audio_pad_mask.shape)}"
            )
        if presence.dim() != 2 or presence.shape[1] != len(MODALITIES):
            raise ValueError(f"presence must be (B, {len(MODALITIES)}) in order {MODALITIES}, got {tuple(presence.shape)}")

        presence = (presence > 0.5).to(video_tokens.dtype)
        if self.training:
            presence = modality_dropout(presence, self.modality_dropout_p)

        # keep[m]: (B, L_m) 1 where a token is real and its modality present.
        raw = (video_tokens, audio_tokens, vitals_tokens)
        keeps = []
        for m, tokens in enumerate(raw):
            keep = presence[:, m : m + 1].expand(-1, tokens.shape[1])
            if m == 1:
                keep = keep * (~audio_pad_mask.bool()).to(keep.dtype)
            keeps.append(keep)

        projected, unimodal = [], []
        for m, tokens in enumerate(raw):
            clean = torch.where(keeps[m].unsqueeze(-1) > 0.5, tokens, torch.zeros_like(tokens))
            projected.append(self.input_proj[m](clean))
            pooled_raw = self.unimodal_norm[m](masked_mean(clean, keeps[m]))
            unimodal.append(torch.where(presence[:, m : m + 1] > 0.5, pooled_raw, torch.zeros_like(pooled_raw)))

        # Sources: null token + tokens, additive masks with the null token always attendable.
        sources, masks = [], []
        batch = video_tokens.shape[0]
        for m, tokens in enumerate(projected):
            null = self.null_tokens[m].unsqueeze(0).expand(batch, -1, -1)
            sources.append(torch.cat([null, tokens], dim=1))
            null_keep = torch.ones_like(keeps[m][:, :1])
            masks.append((1.0 - torch.cat([null_keep, keeps[m]], dim=1)) * MASK_VALUE)

        pooled = []
        for t, target_name in enumerate(MODALITIES):
            outs = [
                self.stacks[f"{source_name}_to_{target_name}"](projected[t], sources[s], masks[s])
                for s, source_name in enumerate(MODALITIES)
                if s != t
            ]
            merged = self.out_norm[t](self.merge[t](torch.cat(outs, dim=-1)))
            pooled.append(masked_mean(merged, keeps[t]))

        scores = torch.cat([self.score[m](pooled[m]) for m in range(len(MODALITIES))], dim=1)  # (B, 3)
        scores = scores + (1.0 - presence) * MASK_VALUE
        weights = torch.softmax(scores, dim=1)
        # Gate each cross-modal stream by its weight, rescaled so uniform weights pass features unchanged.
        gates = weights * presence.sum(dim=1, keepdim=True)
        gated = [pooled[m] * gates[:, m : m + 1] for m in range(len(MODALITIES))]
        fused = self.head(torch.cat([*unimodal, *gated, presence], dim=1))
        nips = NIPS_MAX * torch.sigmoid(self.nips_head(fused)).squeeze(-1)
        if self.item_head is not None:
            items = self.item_head(fused)
        else:
            items = fused.new_zeros(fused.shape[0], ITEM_LOGITS)
        return nips, items, weights


def create_fusion_head(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    """Two-layer MLP on the concatenated streams; the same width and depth as the early-fusion baseline's MLP,
    so the comparison of the two is about cross-modal attention, not head capacity."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim), nn.GELU())


def create_fusion(cfg: ModelConfig, video_dim: int, audio_dim: int, vitals_dim: int) -> CrossModalFusion:
    """Build the fusion head of ``cfg.fusion`` for encoders with the given token widths."""
    f = cfg.fusion
    if f.layers < 1:
        raise ValueError(f"FusionConfig.layers must be >= 1, got {f.layers}")
    if not 0.0 <= f.modality_dropout < 1.0:
        raise ValueError(f"FusionConfig.modality_dropout must be in [0, 1), got {f.modality_dropout}")
    stacks = nn.ModuleDict()
    for target in MODALITIES:
        for source in MODALITIES:
            if source != target:
                stacks[f"{source}_to_{target}"] = CrossModalStack(
                    [create_cross_modal_block(f.dim, f.heads, f.dropout) for _ in range(f.layers)]
                )
    return CrossModalFusion(
        (video_dim, audio_dim, vitals_dim), f.dim, stacks, f.modality_dropout, f.item_logits, f.dropout
    )
