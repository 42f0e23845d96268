"""Shared inputs of the training tests: one small synthetic cohort and foreign-format encoder checkpoints.

The cohort: 4 infants x 1 min = 24 rated windows, 32 px video at 8 fps (the tiny crop, no resize), seeded.
The checkpoints are written in their libraries' own layouts (mmaction2 I3D, torchvggish VGGish) by the
independent renames in tests/models/foreign_checkpoints.py, at the tiny config's widths, with random
weights and BatchNorm statistics (``randomised``), so a tensor loaded into the wrong place shows.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from appliance.cli import main
from models.configs import tiny_config
from models.video import create_i3d_r50
from tests.models.foreign_checkpoints import TorchVGGish, foreign_state, randomised, to_mmaction2

INFANTS = 4
VIDEO_HEAD_CLASSES = 7  # a classifier in the checkpoint, which training must drop and report


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread for the module- and session-scoped runs too (tests/conftest.py sets it per test, after
    wider-scoped fixtures): on the loaded 2-core CI machine OpenMP spin-waiting made them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("training-cohort") / "cohort"
    assert main(["synth", "--out", str(root), "--infants", str(INFANTS), "--seed", "5", "--minutes", "1",
                 "--video-size", "32", "--fps", "8", "--quiet"]) == 0
    return root


@dataclasses.dataclass(frozen=True)
class Foreign:
    """Checkpoint files and the tensors they hold, in the foreign names."""

    video: Path
    audio: Path
    video_state: dict  # mmaction2 names
    audio_state: dict  # torchvggish names (with PCA parameters)


@pytest.fixture(scope="session")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Foreign:
    folder = tmp_path_factory.mktemp("foreign")
    cfg = tiny_config()
    i3d = randomised(create_i3d_r50(dataclasses.replace(cfg.video, num_classes=VIDEO_HEAD_CLASSES)), seed=11)
    video_state = foreign_state(i3d, to_mmaction2)
    torch.save({"state_dict": video_state, "meta": {"note": "mmaction2 layout, written by the test"}},
               folder / "i3d_mmaction2.pth")
    a = cfg.audio
    vggish = randomised(TorchVGGish(a.vggish_channels, a.vggish_fc, a.embedding_dim), seed=12)
    audio_state = dict(vggish.state_dict())
    gen = torch.Generator().manual_seed(13)
    audio_state["pca_eigen_vectors"] = torch.randn(a.embedding_dim, a.embedding_dim, generator=gen)
    audio_state["pca_means"] = torch.randn(a.embedding_dim, 1, generator=gen)
    torch.save(audio_state, folder / "vggish.pth")
    return Foreign(folder / "i3d_mmaction2.pth", folder / "vggish.pth", video_state, audio_state)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The cohort pre-processed for the tiny config as the foreign video checkpoint's family adapts it."""

    cfg: object  # ModelConfig
    inits: list
    samples_file: Path

    def seed(self, run: Path) -> None:
        """Copy the pre-processed windows into a run folder, so ``neopain train`` does not redo them."""
        run.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.samples_file, run / self.samples_file.name)


@pytest.fixture(scope="session")
def prepared(cohort: Path, foreign: Foreign, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    from models.training.init import load_init_checkpoints
    from models.training.samples import prepare_samples, samples_path

    cfg, inits = load_init_checkpoints(tiny_config(), str(foreign.video), "auto", str(foreign.audio), "auto")
    folder = tmp_path_factory.mktemp("prepared")
    prepare_samples(cohort, folder, cfg, progress=False)
    return Prepared(cfg, inits, samples_path(folder, cfg))
