"""Model smoke demo: one synthetic window through the estimator with every subset of modalities.

It shows what the networks do end to end on the CPU — raw frames, audio and RR intervals through the
shared pre-processing into the estimator — and that a score exists for every combination of missing
modalities. The weights are untrained (random), so the numbers show the mechanics, not pain; the
appliance demo (``neopain demo``) runs a trained model on a simulated bed.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from models.configs import CONFIGS, MODALITIES, NIPS_MAX, get_config
from models.estimator import INPUT_NAMES, create_pain_estimator
from models.features.inputs import RawWindow, model_inputs


def synthetic_raw_window(seed: int = 0) -> RawWindow:
    """A face-sized noise clip, a 3 s 450 Hz cry-like tone at 22.05 kHz, and 30 s of RR / SpO2."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(16, 112, 112, 3), dtype=np.uint8)
    rate = 22050
    t = np.arange(int(3.0 * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 450 * t) + 0.1 * np.sin(2 * np.pi * 900 * t)).astype(np.float32)
    rr = rng.normal(400, 15, size=80)
    beats = np.cumsum(rr) / 1000.0
    beats = beats - beats[-1] + 30.0
    spo2_t = np.arange(0.0, 30.0, 1.0)
    return RawWindow(
        end_s=30.0, frames=frames, audio=audio, audio_rate=rate, rr_ms=rr, rr_times_s=beats,
        spo2_pct=np.full(spo2_t.size, 96.0), spo2_times_s=spo2_t,
        presence={m: True for m in MODALITIES},
    )


def run_smoke_demo(config_name: str = "tiny", seed: int = 0) -> int:
    cfg = get_config(config_name)
    torch.manual_seed(seed)
    model = create_pain_estimator(cfg).eval()
    start = time.perf_counter()
    inputs = model_inputs(synthetic_raw_window(seed), cfg)
    prep_ms = (time.perf_counter() - start) * 1e3
    batch = {k: torch.from_numpy(np.asarray(inputs[k]))[None] for k in INPUT_NAMES}
    print(f"neopain model smoke demo — config {cfg.name!r}, untrained weights (mechanics only, not a score)")
    print(f"pre-processing of one window: {prep_ms:.1f} ms")
    print(f"{'present modalities':28s} {'nips':>6s} {'intensity':>9s}  weights (video/audio/vitals)  ms")
    for n in range(1, len(MODALITIES) + 1):
        for subset in itertools.combinations(MODALITIES, n):
            batch["presence"] = torch.tensor([[float(m in subset) for m in MODALITIES]])
            start = time.perf_counter()
            with torch.no_grad():
                nips, _, weights = model(**batch)
            ms = (time.perf_counter() - start) * 1e3
            value = float(nips[0])
            w = "/".join(f"{x:.2f}" for x in weights[0].tolist())
            print(f"{'+'.join(subset):28s} {value:6.2f} {value * 10 / NIPS_MAX:9.2f}  {w:28s} {ms:6.1f}")
            if not np.isfinite(value):
                return 1
    return 0


def add_smoke_demo_arguments(parser: "argparse.ArgumentParser") -> None:  # noqa: F821
    parser.add_argument("--config", default="tiny", choices=sorted(CONFIGS), help="network size (default: tiny)")
    parser.add_argument("--seed", type=int, default=0)


def run_smoke_demo_cli(args: "argparse.Namespace") -> int:  # noqa: F821
    return run_smoke_demo(config_name=args.config, seed=args.seed)
