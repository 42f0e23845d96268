"""The training hyper-parameters: one frozen dataclass, saved beside every checkpoint and in the model card."""

from __future__ import annotations

from dataclasses import dataclass

from models.estimator import BASELINES
from models.recipe import DEFAULT_EPOCHS

MODEL_KINDS = ("fusion",) + BASELINES
# BatchNorm in train mode needs two samples per channel: a micro-batch smaller than this is skipped.
MIN_MICRO_BATCH = 2


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained.

    ``batch_size`` is the *global* batch of one optimiser step. It is cut into ``micro_batches`` equal
    micro-batches (0: one per process), each the unit of a forward pass, of BatchNorm statistics and of a
    random stream; under ``torchrun`` each process takes its share of them and the gradients are averaged.
    So a run's result depends on ``batch_size`` and ``micro_batches`` and not on how many processes share
    the work (see :mod:`models.training.distributed`).

    ``freeze_encoders``: the first so many epochs train with the pretrained encoders (I3D and VGGish)
    frozen, the rest train everything with the encoders' learning rate multiplied by ``encoder_lr_scale``.
    """

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-2
    item_loss_weight: float = 0.1
    folds: int = 4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    freeze_encoders: int = 0
    encoder_lr_scale: float = 1.0
    micro_batches: int = 0  # 0: one per process

    def check(self, world_size: int = 1) -> None:
        """Refuse combinations that cannot be run, naming the option and its value."""
        micro = self.micro_batches or world_size
        problems = []
        if self.epochs < 0:
            problems.append(f"--epochs must be >= 0, got {self.epochs}")
        if self.folds == 1 or self.folds < 0:
            problems.append(f"--folds must be 0 (no cross-validation) or >= 2, got {self.folds}")
        if self.freeze_encoders < 0:
            problems.append(f"--freeze-encoders must be >= 0, got {self.freeze_encoders}")
        if not self.encoder_lr_scale > 0:
            problems.append(f"--encoder-lr-scale must be > 0, got {self.encoder_lr_scale}")
        if self.micro_batches < 0:
            problems.append(f"--micro-batches must be >= 0, got {self.micro_batches}")
        elif micro % world_size:
            problems.append(f"--micro-batches {micro} is not a multiple of the {world_size} processes")
        elif self.batch_size % micro or self.batch_size // micro < MIN_MICRO_BATCH:
            problems.append(f"--batch-size {self.batch_size} must be a multiple of the {micro} micro-batches, "
                            f"each of >= {MIN_MICRO_BATCH} windows")
        if problems:
            raise ValueError("; ".join(problems))
