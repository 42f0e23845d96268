"""Benchmark: the full-size fusion model trained on cached frozen-encoder features (docs/benchmarks/).

    .venv/bin/python scripts/bench_cached_fusion.py --work /tmp/bench-cached --json docs/benchmarks/full_fusion_cached_features.json

Steps, each through the real command: ``neopain synth`` a small cohort; write a full-size I3D-R50 in
mmaction2's layout and a full-size VGGish in torchvggish's, with random weights, through the same
independent renames the tests use (tests/models/foreign_checkpoints.py: no published weights can be
downloaded on this machine); ``neopain train --config full --init-video ... --init-audio ... --freeze-encoders
E --epochs E --folds 0 --final`` (the fusion model on every infant, encoders frozen throughout, features
cached); then one frozen epoch with ``--no-feature-cache`` for comparison. ``--threads`` sets OMP_NUM_THREADS. Each ``neopain`` runs under GNU
``time`` for its peak RSS; seconds per epoch come from the checkpoint's history, the cache build time from
the run's log, the cache size from the files. Load average is sampled before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEOPAIN = [sys.executable, "-m", "appliance.cli"]


def _timed(command: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run under GNU time; returns wall and CPU seconds and peak RSS (MiB) of the command."""
    report = log.with_suffix(".time")
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(report), *command], cwd=REPO, stdout=handle,
                       stderr=subprocess.STDOUT, check=True, env=env)
    peak_kib, user, system = report.read_text().split()[-3:]
    return {"wall_s": round(time.perf_counter() - start, 1), "cpu_s": round(float(user) + float(system), 1),
            "peak_rss_mib": round(int(peak_kib) / 1024, 1)}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def write_checkpoints(folder: Path) -> tuple[Path, Path]:
    """Full-size foreign checkpoints with random weights (default initialisation: a randomised full I3D with
    BatchNorm statistics drawn at random overflows over its 53 convolutions)."""
    import torch

    sys.path.insert(0, str(REPO / "tests" / "models"))
    from foreign_checkpoints import TorchVGGish, foreign_state, to_mmaction2

    from models.configs import AudioConfig, VideoConfig
    from models.video import create_i3d_r50

    torch.manual_seed(0)
    video = folder / "i3d_r50_kinetics400_mmaction2.pth"
    torch.save({"state_dict": foreign_state(create_i3d_r50(VideoConfig(num_classes=400)), to_mmaction2),
                "meta": {"note": "random weights in mmaction2's layout"}}, video)
    a = AudioConfig()
    audio = folder / "vggish_torchvggish.pth"
    torch.save(TorchVGGish(a.vggish_channels, a.vggish_fc, a.embedding_dim).state_dict(), audio)
    return video, audio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--infants", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the commands (0: torch's default)")
    args = parser.parse_args()
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result: dict = {"load_average_start": _load(), "cpus": os.cpu_count(), "threads": args.threads or "default"}
    cohort = work / "cohort"
    result["synth"] = _timed([*NEOPAIN, "synth", "--out", str(cohort), "--infants", str(args.infants), "--minutes", "1",
                              "--quiet"], work / "synth.log", env)
    video, audio = write_checkpoints(work)
    result["checkpoint_mib"] = {"video": round(video.stat().st_size / 2**20, 1), "audio": round(audio.stat().st_size / 2**20, 1)}
    run = work / "cached"
    common = ["train", "--data", str(cohort), "--config", "full", "--models", "fusion", "--folds", "0", "--final",
              "--batch-size", "16", "--device", "cpu", "--init-video", str(video), "--init-audio", str(audio), "--quiet"]
    result["cached_run"] = _timed([*NEOPAIN, *common, "--out", str(run), "--epochs", str(args.epochs),
                                   "--freeze-encoders", str(args.epochs)], work / "cached.log", env)
    history = json.loads((run / "final" / "fusion.history.json").read_text())
    log = (run / "train.log").read_text()
    builds = [float(s) for s in re.findall(r"computed in ([0-9.]+) s", log)]
    cache = run / "feature-cache"
    entries = list(cache.rglob("*.pt"))
    result["cache"] = {
        "build_s": round(sum(builds), 1), "build_s_by_part": builds, "entries": len(entries),
        "bytes": sum(p.stat().st_size for p in entries),
        "mib": round(sum(p.stat().st_size for p in entries) / 2**20, 2),
    }
    result["epoch_seconds"] = [r["seconds"] for r in history]
    result["samples_file_mib"] = round(sum(p.stat().st_size for p in run.glob("samples.*.pt")) / 2**20, 1)
    uncached = work / "uncached"
    uncached.mkdir()
    for sample_file in run.glob("samples.*.pt"):
        shutil.copy(sample_file, uncached / sample_file.name)
    result["uncached_run"] = _timed([*NEOPAIN, *common, "--out", str(uncached), "--epochs", "1", "--freeze-encoders", "1",
                                     "--no-feature-cache"], work / "uncached.log", env)
    result["uncached_epoch_seconds"] = [r["seconds"] for r in json.loads((uncached / "final" / "fusion.history.json").read_text())]
    result["load_average_end"] = _load()
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
