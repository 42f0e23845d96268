"""``torchrun --nproc_per_node 2`` on the CPU (gloo) trains the same models as one process, and only rank 0 writes.

Both runs are ``neopain train`` on the shared 24-window cohort: 2 subject-wise folds of the fusion model,
initialised from the foreign-format checkpoints, 2 epochs of which the first trains on frozen encoders from
the feature cache (so the cache and the phase switch run under DDP too), global batch 8 in 2 micro-batches.
One process (this test's, on one torch thread) runs both micro-batches of a step; under torchrun each of the
two processes runs one (torchrun sets OMP_NUM_THREADS=1) and DDP averages their gradients.

What "equal" means, and why the tolerance is zero: the two runs do the same arithmetic in the same order
except for one step. Each micro-batch has the same windows (``block[k::2]``), the same random stream
(dropout and modality dropout seeded per micro-batch), the same BatchNorm batch statistics (per micro-batch;
SyncBatchNorm does not exist on the CPU and is not needed) and the same kernels on one thread. The gradient
is g0/2 + g1/2 in one process (each micro-batch's loss halved before backward) and (g0 + g1)/2 under DDP
(all-reduce sum divided by the world size); halving is exact in binary floating point and a sum of two
numbers does not depend on their order, so the two are bit-identical (barring subnormal gradients below
1.2e-38, where halving can drop a bit). BatchNorm running statistics differ during training (each process
updates them from its own micro-batches) but are recomputed exactly over the training set at the end
("precise BN"), identically in every process. So the checkpoints' weights and the out-of-fold predictions
are compared for exact equality; the arithmetic is deterministic, so this cannot fail by chance (measured:
all 273 tensors of both folds bit-identical). Not compared: the per-epoch validation MAE in the history,
which uses the running statistics (process 0's under torchrun).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from appliance.cli import main

pytestmark = pytest.mark.slow

RECORDER = Path(__file__).resolve().parent / "record_writes.py"
REPO = Path(__file__).resolve().parents[3]
TIMEOUT_S = 300


def _args(cohort: Path, foreign, run: Path) -> list[str]:
    return ["train", "--data", str(cohort), "--out", str(run), "--config", "tiny", "--models", "fusion",
            "--folds", "2", "--epochs", "2", "--freeze-encoders", "1", "--batch-size", "8", "--micro-batches", "2",
            "--init-video", str(foreign.video), "--init-audio", str(foreign.audio), "--device", "cpu", "--quiet"]


def _run(command: list[str], logs: Path) -> None:
    logs.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _writes(log: Path, under: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.split("\t")[1].startswith(str(under))]


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_torchrun_two_processes_equal_one_and_only_rank0_writes(cohort: Path, foreign, prepared, tmp_path: Path) -> None:
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    prepared.seed(single)
    prepared.seed(ddp)  # rank 0 still writes the rest of the run (checked below)
    assert main(_args(cohort, foreign, single)) == 0  # in this process: one torch thread, like each worker
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(RECORDER),
          str(tmp_path / "logs-ddp"), *_args(cohort, foreign, ddp)], tmp_path / "logs-ddp")

    # Rank 0 wrote the run (positive control: the recorder sees neopain's writes); rank 1 wrote nothing in it.
    rank0 = _writes(tmp_path / "logs-ddp" / "writes.rank0.txt", ddp)
    for expected in ("predictions.csv", "checkpoints/fold1/fusion.pt", "feature-cache/video-", "train.log", "run.json"):
        assert any(expected in line for line in rank0), f"rank 0 did not write {expected}: {rank0[:20]}"
    assert _writes(tmp_path / "logs-ddp" / "writes.rank1.txt", ddp) == []
    assert not (tmp_path / "logs-ddp" / "writes.rank2.txt").exists()

    assert (ddp / "predictions.csv").read_text() == (single / "predictions.csv").read_text()
    for fold in (0, 1):
        a = _state(single / "checkpoints" / f"fold{fold}" / "fusion.pt")
        b = _state(ddp / "checkpoints" / f"fold{fold}" / "fusion.pt")
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"fold {fold}: {len(differ)} tensors differ, e.g. " + ", ".join(
            f"{k} (max {(a[k].double() - b[k].double()).abs().max().item():.3g})" for k in differ[:4])
