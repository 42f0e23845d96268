"""Load torchvggish weights (``vggish-10086976.pth``) into :class:`models.audio.VGGish`.

torchvggish stores a plain state dict whose keys already match ours (``features.{0,3,6,8,11,13}.*``,
``embeddings.{0,2,4}.*``), because :func:`models.audio.create_vggish` keeps its module layout. What
needs care is everything else that travels with those weights:

* the PCA whitening parameters (``pca_eigen_vectors``, ``pca_means``) ship as a separate file
  (``vggish_pca_params-970ea276.pth``); the hub model's own ``state_dict()`` carries them as
  ``pproc._pca_matrix`` / ``pproc._pca_means``. The PCA + 8-bit quantisation only produce AudioSet's
  released feature format; the cry transformer learns its own projection from the raw 128-d embedding,
  so these are accepted, not loaded, and listed in ``LoadReport.unexpected``;
* wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and DataParallel's ``module.`` prefix.

Anything else -- a missing layer, a stray key, or any tensor of the wrong shape (e.g. a checkpoint for
other widths) -- is a :class:`CheckpointError` naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from models.audio import VGGish, create_vggish
from models.checkpoints import CheckpointError, LoadReport, load_mapped_state, read_checkpoint
from models.configs import AudioConfig, ModelConfig

# Keys that belong to torchvggish's PCA post-processor, never to the network.
PCA_KEYS = ("pca_eigen_vectors", "pca_means", "pproc.")


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint, with wrappers and ``module.`` prefixes removed."""
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict of tensors, got {type(obj).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise CheckpointError(f"{source}: entry {key!r} is not a named tensor ({type(value).__name__})")
        state[key.removeprefix("module.")] = value
    return state


def load_torchvggish(
    path_or_state: str | Path | Mapping[str, Any],
    cfg: AudioConfig | ModelConfig | None = None,
) -> tuple[VGGish, LoadReport]:
    """Build VGGish for ``cfg`` (default: the full size) and fill it from a torchvggish state dict.

    ``path_or_state`` is a ``.pth`` path or an already loaded dict. PCA parameters may be present and
    are reported as unexpected, never used. A file holding only the PCA parameters is refused with a
    message saying so. The model is returned in eval mode.
    """
    if isinstance(cfg, ModelConfig):
        cfg = cfg.audio
    cfg = cfg or AudioConfig()
    if isinstance(path_or_state, (str, Path)):
        source = str(path_or_state)
        raw = read_checkpoint(path_or_state)
    else:
        source = "torchvggish state dict"
        raw = path_or_state
    state = _unwrap(raw, source)
    network_keys = [k for k in state if not k.startswith(PCA_KEYS)]
    if not network_keys:
        raise CheckpointError(
            f"{source}: holds only PCA parameters ({', '.join(sorted(state)) or 'nothing'}); "
            "pass the VGGish network weights (vggish-10086976.pth), not vggish_pca_params"
        )
    model = create_vggish(cfg)
    report = load_mapped_state(model, state, source, allow_unexpected=PCA_KEYS)
    return model.eval(), report
