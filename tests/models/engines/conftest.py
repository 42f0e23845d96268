"""One exported tiny model shared by the engine tests (an export with its parity checks takes seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.configs import tiny_config
from models.estimator import create_pain_estimator


def randomise_batchnorm(module: torch.nn.Module, seed: int = 3) -> None:
    """Non-trivial BatchNorm statistics, so that a backend that mishandles BN shows in the scores."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="session")
def exported_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """(model_dir, the PyTorch estimator it was exported from). Treat as read-only; copy to modify."""
    from models.export import export_model_dir

    torch.manual_seed(1)
    cfg = tiny_config()
    model = create_pain_estimator(cfg).eval()
    randomise_batchnorm(model)
    out = tmp_path_factory.mktemp("model") / "tiny"
    export_model_dir(model, cfg, out, progress=False)
    return out, model


@pytest.fixture
def model_copy(exported_tiny: tuple[Path, torch.nn.Module], tmp_path: Path) -> Path:
    """A private copy of the exported model directory that a test may damage."""
    return Path(shutil.copytree(exported_tiny[0], tmp_path / "model"))
