"""Network sizes: the paper's full configuration and a tiny one built by the same code.

Why two sizes: the full networks (I3D-R50, VGGish) are what the device runs and what published
checkpoints fit; the tiny ones keep the exact topology pattern at small widths and inputs so that
tests and CPU training finish in seconds. Every builder takes one of these dataclasses, nothing else,
so a size is a value that can be saved beside a checkpoint and rebuilt from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from models.vocabulary import MODALITIES, NIPS_ITEMS, NIPS_MAX  # noqa: F401  (the builders' vocabulary)

# Kinetics-400 normalisation used by pytorchvideo (RGB in [0, 1]).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
# ImageNet normalisation used by mmaction2 (RGB in [0, 255]).
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)



@dataclass(frozen=True)
class VideoConfig:
    """I3D ResNet-50 (pytorchvideo ``i3d_r50``) and its input clip."""

    frames: int = 16
    crop_size: int = 224
    stem_dim: int = 64
    stem_kernel: tuple[int, int, int] = (5, 7, 7)
    stem_stride_t: int = 1  # mmaction2's I3D uses 2
    stem_pool_stride_t: int = 1  # mmaction2's I3D uses 2
    stage_depths: tuple[int, int, int, int] = (3, 4, 6, 3)
    stage_widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck inner widths
    expansion: int = 4
    # Temporal kernel size of conv_a, per block of each stage (pytorchvideo's pattern).
    temporal_kernels: tuple[tuple[int, ...], ...] = (
        (3, 3, 3),
        (3, 1, 3, 1),
        (3, 1, 3, 1, 3, 1),
        (1, 3, 1),
    )
    pool_after_res2: bool = True  # MaxPool3d k(2,1,1) s(2,1,1)
    num_classes: int = 400  # classification head of the published checkpoint; 0 = no head
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD
    pixel_scale: float = 1.0  # 1.0: input RGB in [0,1]; 255.0: input in [0,255] (mmaction2)

    @property
    def feature_dim(self) -> int:
        return self.stage_widths[-1] * self.expansion


@dataclass(frozen=True)
class AudioConfig:
    """VGGish log-Mel front end, VGGish network and the cry transformer."""

    sample_rate: int = 16000
    patch_frames: int = 96  # 0.96 s of 10 ms hops
    mel_bands: int = 64
    max_patches: int = 8  # longest cry segment the transformer sees (8 x 0.96 s)
    vggish_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    vggish_fc: int = 4096
    embedding_dim: int = 128
    transformer_dim: int = 128
    transformer_heads: int = 4
    transformer_layers: int = 2
    transformer_ff: int = 256
    dropout: float = 0.1


@dataclass(frozen=True)
class VitalsConfig:
    """1D-CNN over a 30 s window of vitals on a fixed grid."""

    window_s: float = 30.0
    grid_hz: float = 4.0
    # Channels: HR (bpm, normalised), HR valid, SpO2 (%, normalised), SpO2 valid.
    in_channels: int = 4
    conv_channels: tuple[int, ...] = (32, 64, 128)
    kernel_size: int = 7
    hrv_features: int = 3  # mean HR, RMSSD, SDNN
    out_dim: int = 128
    dropout: float = 0.1

    @property
    def samples(self) -> int:
        return int(round(self.window_s * self.grid_hz))


@dataclass(frozen=True)
class FusionConfig:
    """MulT-style cross-modal attention fusion and the NIPS regression head."""

    dim: int = 256
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    modality_dropout: float = 0.25  # chance, in training, of hiding each present modality
    item_logits: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """A complete pain estimator: the three encoders and the fusion head."""

    name: str = "full"
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vitals: VitalsConfig = field(default_factory=VitalsConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "ModelConfig":
        """Rebuild a config saved with :meth:`to_dict` (tuples come back from JSON as lists)."""

        def build(cls: type, values: dict[str, Any]) -> Any:
            kwargs = {}
            known = {f.name: f for f in dataclasses.fields(cls)}
            unknown = set(values) - set(known)
            if unknown:
                raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
            for key, value in values.items():
                kwargs[key] = _as_tuples(value)
            return cls(**kwargs)

        return ModelConfig(
            name=data.get("name", "custom"),
            video=build(VideoConfig, data.get("video", {})),
            audio=build(AudioConfig, data.get("audio", {})),
            vitals=build(VitalsConfig, data.get("vitals", {})),
            fusion=build(FusionConfig, data.get("fusion", {})),
        )


def _as_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuples(v) for v in value)
    return value


def full_config() -> ModelConfig:
    """The paper's sizes: I3D-R50 on 16x224^2, VGGish + 2-layer transformer, 1D-CNN, 256-d fusion.

    The estimator uses the I3D trunk without the Kinetics classifier (``num_classes=0``); loaders of
    published checkpoints build the 400-way variant to check every key and then drop the head.
    """
    return ModelConfig(name="full", video=VideoConfig(num_classes=0))


def tiny_config() -> ModelConfig:
    """Same code, small widths and inputs: for tests and CPU training on the synthetic cohort.

    Sizes are chosen so that the CI's end-to-end training (5 models x k folds on a 24-infant cohort)
    fits in a few minutes on two CPU cores: a 32 px crop (I3D's five stride-2 stages end at 1 x 1),
    VGGish at 1/16 width. The fusion's modality dropout is 0.1, not the full model's 0.25: with ~100
    training windows per fold, hiding a quarter of the inputs removes much of a small training signal,
    and the synthetic data already has real missing faces and silent cries. (Not yet shown to matter:
    on one fold 0.0 and 0.1 gave similar results.)
    """
    return ModelConfig(
        name="tiny",
        video=VideoConfig(
            frames=8,
            crop_size=32,
            stem_dim=8,
            stage_depths=(1, 1, 1, 1),
            stage_widths=(8, 16, 32, 64),
            temporal_kernels=((3,), (3,), (3,), (1,)),
            num_classes=0,
        ),
        audio=AudioConfig(
            max_patches=4,
            vggish_channels=(4, 8, 16, 16),
            vggish_fc=64,
            embedding_dim=32,
            transformer_dim=32,
            transformer_heads=2,
            transformer_layers=1,
            transformer_ff=64,
        ),
        vitals=VitalsConfig(conv_channels=(8, 16, 32), out_dim=32),
        fusion=FusionConfig(dim=32, heads=2, layers=1, modality_dropout=0.1),
    )


def small_config() -> ModelConfig:
    """Between tiny and full, to ask whether capacity limits the model (issue 14's learning curve).

    The full topology (I3D-R50's 3-4-6-3 bottlenecks and temporal kernels, 16 frames, VGGish's 4 blocks, a
    2-layer cry transformer, 2 fusion layers) at a quarter of the widths and a 64 px crop, so that CPU
    training on a synthetic cohort stays within minutes per model. Not a device size: published checkpoints
    do not fit it.
    """
    return ModelConfig(
        name="small",
        video=VideoConfig(
            crop_size=64,
            stem_dim=16,
            stage_widths=(16, 32, 64, 128),
            num_classes=0,
        ),
        audio=AudioConfig(
            vggish_channels=(16, 32, 64, 128),
            vggish_fc=256,
            embedding_dim=64,
            transformer_dim=64,
            transformer_heads=4,
            transformer_layers=2,
            transformer_ff=128,
        ),
        vitals=VitalsConfig(conv_channels=(16, 32, 64), out_dim=64),
        fusion=FusionConfig(dim=64, heads=4, layers=2, modality_dropout=0.1),
    )


CONFIGS = {"full": full_config, "small": small_config, "tiny": tiny_config}


def get_config(name: str) -> ModelConfig:
    """Config by name, with a clear error for an unknown one."""
    try:
        return CONFIGS[name]()
    except KeyError:
        raise ValueError(f"unknown model config {name!r}; choose one of {sorted(CONFIGS)}") from None
