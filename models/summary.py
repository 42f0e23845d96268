"""``neopain models summary``: parameters and multiply-accumulates of each network for its input.

Why count here rather than quote the papers: the figures checked in tests (I3D-R50 ~28.0 M parameters,
VGGish ~72.1 M, 56.8 GMAC for a 16x224^2 clip) prove the builders reproduce the published topologies;
the same counter then tells what our own heads and the tiny configs cost.
MACs are measured with torch's own FlopCounterMode (FLOP = 2 MAC for matmul/conv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.configs import CONFIGS, ModelConfig, get_config


@dataclass(frozen=True)
class NetworkSummary:
    name: str
    input_shapes: str
    params: int
    gmac: float


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_gmac(module: nn.Module, inputs: tuple[Any, ...]) -> float:
    """Multiply-accumulates (in G) of one forward pass, counted by torch's FlopCounterMode."""
    module.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return counter.get_total_flops() / 2 / 1e9


def _shapes(inputs: tuple[Any, ...]) -> str:
    return ", ".join("x".join(str(d) for d in t.shape) for t in inputs if isinstance(t, torch.Tensor))


def _networks(cfg: ModelConfig, batch: int) -> list[tuple[str, Callable[[], nn.Module], Callable[[], tuple]]]:
    import dataclasses

    from models.audio import create_audio_encoder, create_vggish
    from models.estimator import create_baseline, create_pain_estimator, example_inputs
    from models.fusion import create_fusion
    from models.video import create_i3d_r50, create_video_encoder
    from models.vitals import create_vitals_encoder

    v, a, vt = cfg.video, cfg.audio, cfg.vitals
    clip = lambda: (torch.zeros(batch, 3, v.frames, v.crop_size, v.crop_size),)  # noqa: E731
    ex = example_inputs(cfg, batch=batch)
    estimator_inputs = lambda: tuple(ex.values())  # noqa: E731

    def fusion_inputs() -> tuple:
        enc_v, enc_a, enc_vt = create_video_encoder(v), create_audio_encoder(a), create_vitals_encoder(vt)
        with torch.no_grad():
            return (
                enc_v.eval()(ex["clip"]),
                enc_a.eval()(ex["audio_patches"], ex["audio_pad_mask"]),
                ex["audio_pad_mask"],
                enc_vt.eval()(ex["vitals_series"], ex["hrv"]),
                ex["presence"],
            )

    def fusion() -> nn.Module:
        return create_fusion(
            cfg, create_video_encoder(v).out_dim, create_audio_encoder(a).out_dim, create_vitals_encoder(vt).out_dim
        )

    head_cfg = dataclasses.replace(v, num_classes=400)
    return [
        (f"I3D-R50 trunk + {head_cfg.num_classes}-way head", lambda: create_i3d_r50(head_cfg), clip),
        ("video encoder (I3D tokens)", lambda: create_video_encoder(v), clip),
        ("VGGish (one 96x64 patch)", lambda: create_vggish(a), lambda: (torch.zeros(batch, 1, a.patch_frames, a.mel_bands),)),
        ("audio encoder (VGGish + transformer)", lambda: create_audio_encoder(a), lambda: (ex["audio_patches"], ex["audio_pad_mask"])),
        ("vitals encoder (1D-CNN)", lambda: create_vitals_encoder(vt), lambda: (ex["vitals_series"], ex["hrv"])),
        ("cross-modal fusion head", fusion, fusion_inputs),
        ("pain estimator (all)", lambda: create_pain_estimator(cfg), estimator_inputs),
        ("baseline: early fusion", lambda: create_baseline("early", cfg), estimator_inputs),
    ]


def summarize(config_name: str = "full", batch: int = 1) -> list[NetworkSummary]:
    """Build every network of the named config and count its parameters and GMACs."""
    cfg = get_config(config_name)
    rows = []
    for name, build, make_inputs in _networks(cfg, batch):
        module = build()
        inputs = make_inputs()
        rows.append(NetworkSummary(name, _shapes(inputs), count_params(module), count_gmac(module, inputs)))
    return rows


def format_summary(rows: list[NetworkSummary]) -> str:
    header = f"{'network':40s} {'params (M)':>11s} {'GMAC':>9s}  input"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.name:40s} {row.params / 1e6:11.2f} {row.gmac:9.3f}  {row.input_shapes}")
    return "\n".join(lines)


def add_summary_arguments(parser: "argparse.ArgumentParser") -> None:  # noqa: F821
    parser.add_argument("--config", default="full", choices=sorted(CONFIGS), help="network size (default: full)")


def run_summary(args: "argparse.Namespace") -> int:  # noqa: F821
    print(format_summary(summarize(args.config, batch=1)))
    return 0
