"""Training: subject-wise cross-validation of the fusion model and its baselines, fine-tuning from published
checkpoints, and the final deployable model with its card.

One module per job: :mod:`~models.training.config` (hyper-parameters), :mod:`~models.training.loop` (one
model's epochs), :mod:`~models.training.distributed` (torchrun), :mod:`~models.training.init` (published
checkpoints), :mod:`~models.training.freeze` (frozen-then-fine-tuned schedule),
:mod:`~models.training.feature_cache` (frozen encoders' outputs on disk), :mod:`~models.training.cv`,
:mod:`~models.training.final`, :mod:`~models.training.card` (model card), :mod:`~models.training.samples`
(pre-processed windows of a run) and :mod:`~models.training.command` (``neopain train``).
"""

from models.training.config import MODEL_KINDS, TrainConfig
from models.training.cv import cross_validate, write_predictions
from models.training.loop import create_model, initial_model, loss_fn, predict, recompute_batchnorm, train_model
from models.training.samples import prepare_samples

__all__ = [
    "MODEL_KINDS",
    "TrainConfig",
    "create_model",
    "cross_validate",
    "initial_model",
    "loss_fn",
    "predict",
    "prepare_samples",
    "recompute_batchnorm",
    "train_model",
    "write_predictions",
]
