"""The frozen-encoder feature cache is a pure speed-up, computed once, and a changed encoder is a new key.

On the shared cohort, pre-processed for the tiny config with the foreign checkpoints' weights: training the
fusion model on frozen encoders from the cache gives the model that running the frozen encoders every
step gives (measured: bit-identical; asserted within 1e-5, since per-window convolution results may in
principle depend on how windows are batched), after computing each distinct window once; and one changed weight of the I3D puts its features in another folder, leaving the old one.
"""

from __future__ import annotations

import torch

from models.training import TrainConfig, initial_model, train_model
from models.training.feature_cache import FeatureCache, module_sha256, window_keys
from models.training.parts import pretrained_parts
from models.training.session import TrainSession

TRAIN = TrainConfig(epochs=1, freeze_encoders=1, batch_size=8, seed=0, device="cpu")


def _samples(prepared):
    from models.samples import SampleSet

    return SampleSet.load(prepared.samples_file)


def test_training_on_cached_features_equals_running_frozen_encoders(prepared, tmp_path) -> None:
    samples = _samples(prepared)
    unique = len(set(window_keys(samples, "video")))
    cache = FeatureCache(tmp_path / "cache", progress=False)
    cached = train_model("fusion", prepared.cfg, samples, TRAIN,
                         session=TrainSession(inits=prepared.inits, cache=cache, progress=False)).state_dict()
    assert cache.computed == unique + len(set(window_keys(samples, "audio")))
    run = train_model("fusion", prepared.cfg, samples, TRAIN, session=TrainSession(inits=prepared.inits, progress=False))
    direct = run.state_dict()
    assert cached.keys() == direct.keys()
    for key in cached:
        torch.testing.assert_close(cached[key], direct[key], rtol=0, atol=1e-5, msg=key)
    changed = [k for k in cached if k.startswith("fusion.") and not torch.equal(cached[k], initial_model(
        "fusion", prepared.cfg, TRAIN.seed, prepared.inits).state_dict()[k])]
    assert changed  # the comparison is between trained models, not two copies of the start
    # (Reuse across runs: tests/models/training/test_finetune.py checks a second run leaves the cache untouched.)


def test_changed_encoder_weights_are_a_new_key(prepared, tmp_path) -> None:
    samples = _samples(prepared).subset(range(6))
    model = initial_model("video", prepared.cfg, 0, prepared.inits)
    part = pretrained_parts(model)["video"]
    cache = FeatureCache(tmp_path / "cache", progress=False)
    first = cache.features(part, samples)
    old_folder = cache.folder("video", module_sha256(part.module))
    before = sorted(p.name for p in old_folder.iterdir())
    with torch.no_grad():
        part.module.blocks[0].conv.weight[0, 0, 0, 0, 0] += 1e-3
    new_hash = module_sha256(part.module)
    assert cache.folder("video", new_hash) != old_folder and not cache.has_encoder("video", new_hash)
    second = cache.features(part, samples)
    assert cache.has_encoder("video", new_hash)
    assert sorted(p.name for p in old_folder.iterdir()) == before
    assert not torch.equal(first, second)  # the new entries are the changed encoder's outputs
    with torch.no_grad():
        want = part.module.eval().forward_features(samples.inputs["clip"])  # the cache runs encoders in eval mode
    torch.testing.assert_close(second, want, rtol=0, atol=1e-5)
