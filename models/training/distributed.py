"""``torchrun``: rank, process group, and which windows each process trains on.

Why a run gives the same model on one process or several: the global batch of a step is cut into
micro-batches ``block[k::M]`` (``M`` = micro-batches), process ``r`` of ``W`` takes micro-batches
``k = r, r + W, ...``, each micro-batch's loss is divided by the number a process takes, and DDP averages
the gradients over processes. Every micro-batch draws its random numbers (dropout, modality dropout) from
a generator seeded by (seed, epoch, step, k), and BatchNorm normalises over one micro-batch. So one
process running all ``M`` micro-batches and ``W`` processes running ``M / W`` each compute the same
gradient from the same numbers; only the order of floating-point additions may differ (see
tests/models/training/test_torchrun.py for what that leaves).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from models.training.config import MIN_MICRO_BATCH


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("training device 'cuda' requested but CUDA is not available")
    return torch.device(name)


class Distributed:
    """torchrun's environment, when present: rank, world size, and the process group."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str) -> torch.device:
        device = resolve_device(requested)
        if self.enabled and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        # Every parameter that takes a gradient is used in every forward (absent modalities are masked with
        # torch.where, not skipped), so DDP need not search the graph for unused ones.
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def step_plan(order: torch.Tensor, batch_size: int, micro_batches: int, dist: Distributed) -> list[list[tuple[int, torch.Tensor]]]:
    """This process's micro-batches ``(k, row indices)`` for each optimiser step of one epoch.

    The shuffled ``order`` is cut to a multiple of ``micro_batches`` (at most ``micro_batches - 1`` windows
    sit out an epoch; the shuffle changes which), so every micro-batch of a step has the same size and the
    mean of their mean losses is the batch's mean loss. A step whose micro-batches would hold fewer than
    two windows is skipped on every process alike (BatchNorm needs two).
    """
    usable = len(order) // micro_batches * micro_batches
    order = order[:usable]
    steps = []
    for start in range(0, usable, batch_size):
        block = order[start : start + batch_size]
        if len(block) // micro_batches < MIN_MICRO_BATCH:
            continue
        steps.append([(k, block[k::micro_batches]) for k in range(dist.rank, micro_batches, dist.world_size)])
    return steps


def micro_seed(seed: int, epoch: int, step: int, micro: int) -> int:
    """The random seed of one micro-batch: the same on any number of processes, and after a resume."""
    return int(np.random.SeedSequence([seed, epoch, step, micro]).generate_state(1)[0])
