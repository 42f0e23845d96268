"""Foreign I3D / ResNet-50 checkpoints: written here in their own key layout, loaded back with our loaders.

The foreign names are produced by mappings written independently of the loaders (split-based renames,
and a torchvision-style 2D ResNet built from plain torch modules), so a wrong rule in either direction
shows as a failed load or a different output.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from models.checkpoints import CheckpointError
from models.checkpoints.i3d import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    inflate_imagenet_resnet50,
    load_mmaction2_i3d,
    load_pytorchvideo_i3d,
)
from models.configs import IMAGENET_MEAN_255, IMAGENET_STD_255, VideoConfig
from models.video import I3DResNet, create_i3d_r50
from tests.models.foreign_checkpoints import foreign_state, randomised, to_mmaction2

# Small, but with several blocks per stage and both temporal kernel sizes, so block indices and
# conv_a kernels are exercised; a 5-way head so the classifier mapping is too.
SMALL = VideoConfig(
    frames=8,
    crop_size=64,
    stem_dim=8,
    stage_depths=(2, 2, 3, 2),
    stage_widths=(8, 16, 16, 32),
    temporal_kernels=((3, 3), (3, 1), (3, 1, 3), (1, 3)),
    num_classes=5,
)


def clip_for(cfg: VideoConfig, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, cfg.frames, cfg.crop_size, cfg.crop_size, generator=torch.Generator().manual_seed(1))


# --- independent renames: our (pytorchvideo) names -> foreign names (mmaction2's in foreign_checkpoints) --


def to_pytorchvideo(key: str) -> str:
    return key


FORMATS = {
    "pytorchvideo": (load_pytorchvideo_i3d, to_pytorchvideo, "model_state"),
    "mmaction2": (load_mmaction2_i3d, to_mmaction2, "state_dict"),
}


def save(tmp_path, container: str, state: dict, name: str = "ckpt.pth"):
    path = tmp_path / name
    torch.save({container: state, "epoch": 3, "meta": {"note": "written by the test"}}, path)
    return path


# --- pytorchvideo and mmaction2 ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_foreign_checkpoint_roundtrip_gives_identical_outputs(tmp_path, fmt: str) -> None:
    loader, rename, container = FORMATS[fmt]
    source = randomised(create_i3d_r50(SMALL))
    path = save(tmp_path, container, foreign_state(source, rename))
    loaded, report = loader(path, SMALL)
    assert isinstance(loaded, I3DResNet) and not loaded.training
    assert report.missing == [] and report.unexpected == []
    assert report.loaded == len(source.state_dict())
    clip = clip_for(SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), source(clip), rtol=0, atol=0)
        torch.testing.assert_close(loaded.forward_features(clip), source.forward_features(clip), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_head_dropped_when_config_has_none(tmp_path, fmt: str) -> None:
    loader, rename, container = FORMATS[fmt]
    source = randomised(create_i3d_r50(SMALL))
    headless = dataclasses.replace(SMALL, num_classes=0)
    # A bare state dict (no container) is accepted too.
    loaded, report = loader(foreign_state(source, rename), headless)
    assert report.unexpected == ["blocks.6.proj.bias", "blocks.6.proj.weight"]
    assert loaded.blocks[6].proj is None
    clip = clip_for(SMALL)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(clip), source.forward_features(clip), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_wrong_shape_names_the_key(tmp_path, fmt: str) -> None:
    loader, rename, container = FORMATS[fmt]
    state = foreign_state(randomised(create_i3d_r50(SMALL)), rename)
    bad = rename("blocks.3.res_blocks.1.branch2.conv_a.weight")
    assert state[bad].shape == (16, 64, 1, 1, 1)  # second block of res3: conv_a is 1x1x1
    state[bad] = torch.zeros(16, 64, 3, 1, 1)
    with pytest.raises(CheckpointError, match=re.escape(bad)):
        loader(save(tmp_path, container, state), SMALL)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_extra_and_missing_keys_are_named(tmp_path, fmt: str) -> None:
    loader, rename, container = FORMATS[fmt]
    clean = foreign_state(randomised(create_i3d_r50(SMALL)), rename)

    extra = dict(clean, **{"backbone.layer9.0.conv1.conv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=re.escape("backbone.layer9.0.conv1.conv.weight")):
        loader(save(tmp_path, container, extra, "extra.pth"), SMALL)

    missing = dict(clean)
    del missing[rename("blocks.4.res_blocks.2.branch2.norm_b.running_var")]
    with pytest.raises(CheckpointError, match=re.escape("blocks.4.res_blocks.2.branch2.norm_b.running_var")):
        loader(save(tmp_path, container, missing, "missing.pth"), SMALL)

    no_head = {k: v for k, v in clean.items() if k != rename("blocks.6.proj.weight")}
    with pytest.raises(CheckpointError, match=re.escape("blocks.6.proj.weight")):
        loader(no_head, SMALL)


def test_default_configs_follow_each_checkpoint_family() -> None:
    """cfg=None: pytorchvideo's i3d_r50, or mmaction2's (temporal strides 2, ImageNet stats on 0-255),
    each with the checkpoint's number of classes."""
    source = randomised(create_i3d_r50(VideoConfig(num_classes=400)))
    small_clip = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        want_pv = source.forward_features(small_clip)

    # In memory (the file path is covered above): 28 M parameters need not go through the disk twice.
    pv, report = load_pytorchvideo_i3d({"model_state": foreign_state(source, to_pytorchvideo), "epoch": 1})
    assert pv.cfg == VideoConfig(num_classes=400) and report.unexpected == []
    with torch.no_grad():
        torch.testing.assert_close(pv.forward_features(small_clip), want_pv, rtol=0, atol=0)

    mm, _ = load_mmaction2_i3d({"state_dict": foreign_state(source, to_mmaction2), "meta": {}})
    assert mm.cfg.num_classes == 400 and mm.cfg.pixel_scale == 255.0
    assert mm.cfg.mean == IMAGENET_MEAN_255 and mm.cfg.std == IMAGENET_STD_255
    assert mm.blocks[0].conv.stride == (2, 2, 2) and mm.blocks[0].pool.stride == (2, 2, 2)
    # Same weights, different temporal strides: 8 frames -> 4 -> 2 -> 1 token.
    with torch.no_grad():
        assert mm.forward_features(small_clip).shape == (1, 1, 2048)
    for name, tensor in source.state_dict().items():
        assert torch.equal(mm.state_dict()[name], tensor), name


def test_ddp_prefix_and_bad_files(tmp_path) -> None:
    source = randomised(create_i3d_r50(SMALL))
    prefixed = {"module." + k: v for k, v in source.state_dict().items()}
    loaded, _ = load_pytorchvideo_i3d({"model_state": prefixed}, SMALL)
    assert torch.equal(loaded.blocks[5].res_blocks[1].branch2.conv_a.weight, source.blocks[5].res_blocks[1].branch2.conv_a.weight)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_pytorchvideo_i3d(tmp_path / "nope.pth", SMALL)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable torch file"):
        load_mmaction2_i3d(garbage, SMALL)
    with pytest.raises(CheckpointError, match="non-tensor entries: .*epoch"):
        load_mmaction2_i3d({"meta": {}, "epoch": 1}, SMALL)


# --- ImageNet ResNet-50 inflation -------------------------------------------------------------------


class Bottleneck2d(nn.Module):
    """torchvision-style bottleneck (stride in conv2), written out for this test."""

    def __init__(self, dim_in: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(dim_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = (
            nn.Sequential(nn.Conv2d(dim_in, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or dim_in != out
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet2d(nn.Module):
    """torchvision ``resnet50`` key layout (conv1, bn1, layer1-4, fc) at any widths/depths."""

    def __init__(self, stem: int, widths: tuple[int, ...], depths: tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        dim = stem
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck2d(dim, width, 2 if (j == 0 and i > 0) else 1))
                dim = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


def test_inflated_resnet50_sums_to_2d_and_copies_bn() -> None:
    net2d = randomised(ResNet2d(64, (64, 128, 256, 512), (3, 4, 6, 3), 1000))
    state2d = net2d.state_dict()
    model, report = inflate_imagenet_resnet50(dict(state2d))
    assert model.cfg.num_classes == 0 and model.cfg.mean == IMAGENET_MEAN and model.cfg.std == IMAGENET_STD
    assert IMAGENET_MEAN[0] == pytest.approx(0.485) and IMAGENET_STD[2] == pytest.approx(0.225)
    assert report.unexpected == ["fc.bias", "fc.weight"] and report.missing == []
    own = model.state_dict()
    assert own["blocks.0.conv.weight"].shape[2] == 5

    checked = 0
    for key2d, w2d in state2d.items():
        if key2d.startswith("fc."):
            continue
        key3d = torchvision_to_ours(key2d)
        w3d = own[key3d]
        if w2d.ndim == 4:
            assert w3d.ndim == 5 and w3d.shape[:2] == w2d.shape[:2] and w3d.shape[3:] == w2d.shape[2:], key2d
            torch.testing.assert_close(w3d.sum(dim=2), w2d, rtol=1e-5, atol=1e-6)
            # Every temporal slice is the same: the kernel is repeated, not placed at the centre.
            assert torch.allclose(w3d, w3d[:, :, :1].expand_as(w3d)), key2d
        else:
            assert torch.equal(w3d, w2d), key2d  # BN weight/bias/running stats copied as they are
        checked += 1
    assert checked == len(state2d) - 2
    conv_a_t = [
        model.blocks[b].res_blocks[j].branch2.conv_a.weight.shape[2]
        for b in (1, 3, 4, 5)
        for j in range(len(model.blocks[b].res_blocks))
    ]
    assert conv_a_t == [k for stage in model.cfg.temporal_kernels for k in stage]


def torchvision_to_ours(key2d: str) -> str:
    """torchvision 2D key -> our 3D key (independent of the loader's regexes)."""
    parts = key2d.split(".")
    if parts[0] == "conv1":
        return "blocks.0.conv.weight"
    if parts[0] == "bn1":
        return "blocks.0.norm." + parts[1]
    block = {"layer1": "1", "layer2": "3", "layer3": "4", "layer4": "5"}[parts[0]]
    head = f"blocks.{block}.res_blocks.{parts[1]}."
    if parts[2] == "downsample":
        return head + ("branch1_conv." if parts[3] == "0" else "branch1_norm.") + parts[4]
    letter = "abc"[int(parts[2][-1]) - 1]
    return head + f"branch2.{'conv' if parts[2].startswith('conv') else 'norm'}_{letter}." + parts[3]


def test_inflated_net_on_a_still_clip_matches_the_2d_net() -> None:
    # Temporal kernels chosen so the middle tokens see no temporal zero padding: stem k5 and one k3.
    cfg = VideoConfig(
        frames=16,
        crop_size=64,
        stem_dim=8,
        stage_depths=(2, 1, 2, 1),
        stage_widths=(8, 16, 16, 32),
        temporal_kernels=((3, 1), (1,), (1, 1), (1,)),
        num_classes=10,
    )
    net2d = randomised(ResNet2d(8, (8, 16, 16, 32), (2, 1, 2, 1), 10))
    model, report = inflate_imagenet_resnet50(net2d.state_dict(), cfg)
    assert report.unexpected == [] and report.missing == []
    assert torch.equal(model.blocks[6].proj.weight, net2d.fc.weight)  # fc fits a 10-way head

    frame = torch.randn(2, 3, 64, 64)
    still = frame.unsqueeze(2).expand(2, 3, cfg.frames, 64, 64).contiguous()
    with torch.no_grad():
        tokens = model.forward_features(still)
        want = net2d.features(frame)
    assert tokens.shape == (2, 8, 32 * 4)
    # Frames 0-2 and 13-15 see zero padding (stem k5, res2 k3); after the pool, tokens 2-5 do not.
    for t in range(2, 6):
        torch.testing.assert_close(tokens[:, t], want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(tokens[:, 0], want, rtol=1e-4, atol=1e-4)  # the padding does show at the edge


def test_inflation_with_unfitting_fc_keeps_fresh_head_and_reports_it() -> None:
    cfg = dataclasses.replace(SMALL, num_classes=3)
    net2d = randomised(ResNet2d(8, (8, 16, 16, 32), (2, 2, 3, 2), 1000))
    model, report = inflate_imagenet_resnet50(net2d.state_dict(), cfg)
    assert report.missing == ["blocks.6.proj.bias", "blocks.6.proj.weight"]
    assert report.unexpected == ["fc.bias", "fc.weight"]
    assert model.blocks[6].proj.weight.shape == (3, 128)


def test_inflation_refuses_wrong_shapes_and_unknown_keys() -> None:
    state = randomised(ResNet2d(8, (8, 16, 16, 32), (2, 2, 3, 2), 1000)).state_dict()
    bad = dict(state, **{"layer2.1.conv2.weight": torch.zeros(16, 16, 5, 5)})
    with pytest.raises(CheckpointError, match=re.escape("layer2.1.conv2.weight")):
        inflate_imagenet_resnet50(bad, SMALL)
    extra = dict(state, **{"layer5.0.conv1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=re.escape("layer5.0.conv1.weight")):
        inflate_imagenet_resnet50(extra, SMALL)
    missing = {k: v for k, v in state.items() if k != "layer3.2.bn3.running_mean"}
    with pytest.raises(CheckpointError, match=re.escape("blocks.4.res_blocks.2.branch2.norm_c.running_mean")):
        inflate_imagenet_resnet50(missing, SMALL)
