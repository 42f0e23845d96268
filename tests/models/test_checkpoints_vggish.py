"""torchvggish checkpoints load into our VGGish, and wrong ones are refused by name.

``TorchVGGish`` (tests/models/foreign_checkpoints.py) re-creates torchvggish's own module so the test saves
files in exactly that layout.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.audio import create_vggish
from models.checkpoints import CheckpointError
from models.checkpoints.vggish import load_torchvggish
from models.configs import full_config, tiny_config
from tests.models.foreign_checkpoints import TorchVGGish

TINY = tiny_config().audio
FULL = full_config().audio


def _reference() -> TorchVGGish:
    return TorchVGGish(TINY.vggish_channels, TINY.vggish_fc, TINY.embedding_dim).eval()


def test_full_size_layout_matches_torchvggish() -> None:
    """Every key and shape of a full torchvggish model is one of ours, and vice versa."""
    with torch.device("meta"):
        theirs = TorchVGGish(FULL.vggish_channels, FULL.vggish_fc, FULL.embedding_dim).state_dict()
        ours = create_vggish(FULL).state_dict()
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_saved_checkpoint_loads_and_reproduces_outputs(tmp_path) -> None:
    ref = _reference()
    path = tmp_path / "vggish.pth"
    torch.save(ref.state_dict(), path)
    model, report = load_torchvggish(path, tiny_config())
    assert report.loaded == len(ref.state_dict()) == 18
    assert report.missing == [] and report.unexpected == []
    assert not model.training
    x = torch.randn(3, 1, 96, 64)
    with torch.no_grad():
        expected = ref(x)
        ours = model(x)
    # torchvggish ends in a ReLU; ours returns the pre-activation embedding (see models.audio.VGGish).
    torch.testing.assert_close(torch.relu(ours), expected, rtol=0, atol=0)
    assert (ours < 0).any()


def test_pca_parameters_are_accepted_and_reported() -> None:
    state = dict(_reference().state_dict())
    state["pca_eigen_vectors"] = torch.randn(128, 128)
    state["pca_means"] = torch.randn(128, 1)
    state["pproc._pca_matrix"] = torch.randn(128, 128)
    _, report = load_torchvggish({"state_dict": state}, TINY)
    assert report.unexpected == ["pca_eigen_vectors", "pca_means", "pproc._pca_matrix"]
    assert report.loaded == 18
    assert "pca_means" in report.summary()


def test_pca_only_file_is_refused(tmp_path) -> None:
    path = tmp_path / "vggish_pca_params.pth"
    torch.save({"pca_eigen_vectors": torch.randn(128, 128), "pca_means": torch.randn(128, 1)}, path)
    with pytest.raises(CheckpointError, match="only PCA parameters"):
        load_torchvggish(path)


def test_wrong_shape_names_the_key() -> None:
    state = dict(_reference().state_dict())
    state["features.6.weight"] = torch.randn(7, 16, 3, 3)
    with pytest.raises(CheckpointError, match=r"features\.6\.weight"):
        load_torchvggish(state, TINY)


def test_checkpoint_of_other_widths_is_refused() -> None:
    wider = dataclasses.replace(TINY, vggish_fc=2 * TINY.vggish_fc)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*embeddings\.0\.weight"):
        load_torchvggish(_reference().state_dict(), wider)


def test_missing_and_stray_keys_are_refused() -> None:
    state = dict(_reference().state_dict())
    del state["embeddings.4.bias"]
    with pytest.raises(CheckpointError, match=r"embeddings\.4\.bias"):
        load_torchvggish(state, TINY)
    state = dict(_reference().state_dict())
    state["classifier.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"classifier\.weight"):
        load_torchvggish(state, TINY)


def test_unreadable_inputs() -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torchvggish("/nonexistent/vggish.pth")
    with pytest.raises(CheckpointError, match="not a named tensor"):
        load_torchvggish({"features.0.weight": [1, 2, 3]}, TINY)
