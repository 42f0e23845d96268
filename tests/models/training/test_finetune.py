"""``neopain train`` from foreign-format published checkpoints: load, freeze, cache, fine-tune, final model + card.

Two runs on the shared 24-window cohort (tiny networks, 2 epochs, in-process, one torch thread):

* **frozen**: ``--init-video`` an mmaction2-layout I3D and ``--init-audio`` a torchvggish VGGish (formats told
  from the files), ``--freeze-encoders 2`` of 2 epochs, 2-fold CV of fusion, video and audio, then ``--final``.
  Every fold and final checkpoint's encoders are bit-identical to the files (weights and BatchNorm
  statistics, compared through the independent foreign renames), while every head parameter moved.
* **unfrozen**: ``--folds 0 --final --freeze-encoders 1 --epochs 2`` with the same feature cache: the second
  epoch fine-tunes the encoders (they differ from the files), the card says ``--epochs`` and has no CV, and
  the cache is reused as it is (the same checkpoints hash to the same folder).

And a wrong-architecture checkpoint stops at once with exit 2, naming the key and both shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.cli import main
from models.card import card_beside, read_card
from models.configs import ModelConfig
from models.export import load_estimator_checkpoint
from models.training import initial_model
from tests.models.foreign_checkpoints import TorchVGGish, foreign_state, randomised, to_mmaction2

pytestmark = pytest.mark.slow

KINDS = ("fusion", "video", "audio")
FOLDS = 2
VIDEO_PREFIXES = ("encoders.video.backbone.", "encoder.backbone.")
AUDIO_PREFIXES = ("encoders.audio.vggish.", "encoder.vggish.")


def _train(cohort: Path, run: Path, foreign, cache: Path, *extra: str) -> None:
    assert main(["train", "--data", str(cohort), "--out", str(run), "--config", "tiny", "--batch-size", "8",
                 "--init-video", str(foreign.video), "--init-audio", str(foreign.audio),
                 "--feature-cache", str(cache), "--device", "cpu", "--quiet", *extra]) == 0


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(cohort: Path, foreign, prepared, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("finetune")
    cache = tmp / "feature-cache"
    frozen, unfrozen = tmp / "frozen", tmp / "unfrozen"
    prepared.seed(frozen)
    prepared.seed(unfrozen)
    _train(cohort, frozen, foreign, cache, "--models", ",".join(KINDS), "--folds", str(FOLDS), "--epochs", "2",
           "--freeze-encoders", "2", "--final")
    cache_after_frozen = _snapshot(cache)
    _train(cohort, unfrozen, foreign, cache, "--models", "fusion", "--folds", "0", "--final", "--epochs", "2",
           "--freeze-encoders", "1", "--encoder-lr-scale", "0.1")
    return {"frozen": frozen, "unfrozen": unfrozen, "cache": cache, "cache_after_frozen": cache_after_frozen}


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _encoder_state(state: dict, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The encoder's tensors under their own (unprefixed) names."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                out[key[len(prefix):]] = value
    return out


def _as_files(state: dict, foreign) -> tuple[dict, dict]:
    """(video, audio) encoder tensors of a model, renamed to the checkpoint files' names."""
    video = {to_mmaction2(k): v for k, v in _encoder_state(state, VIDEO_PREFIXES).items()}
    return video, _encoder_state(state, AUDIO_PREFIXES)


def _all_checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").rglob("*.pt")) + sorted((run / "final").glob("*.pt"))


def test_init_report_names_formats_and_dropped_keys(runs: dict, foreign) -> None:
    reports = {r["modality"]: r for r in json.loads((runs["frozen"] / "init_report.json").read_text())}
    video, audio = reports["video"], reports["audio"]
    assert video["format"] == "mmaction2" and audio["format"] == "torchvggish"  # told from the files' keys
    assert video["missing"] == [] and audio["missing"] == []
    # The checkpoint's 7-way classifier is dropped (the estimator has none) and torchvggish's PCA is not used.
    assert video["unexpected"] == ["blocks.6.proj.bias", "blocks.6.proj.weight"]
    assert audio["unexpected"] == ["pca_eigen_vectors", "pca_means"]
    assert video["loaded"] == len(foreign.video_state) - 2 and audio["loaded"] == len(foreign.audio_state) - 2
    assert video["sha256"] == hashlib.sha256(foreign.video.read_bytes()).hexdigest()
    # mmaction2's family: temporal stride 2 in the stem and ImageNet statistics on 0-255, in the trained config.
    cfg = json.loads((runs["frozen"] / "run.json").read_text())["model_config"]["video"]
    assert (cfg["stem_stride_t"], cfg["stem_pool_stride_t"], cfg["pixel_scale"]) == (2, 2, 255.0)
    assert cfg["crop_size"] == 32  # the tiny size itself is kept


def test_frozen_encoders_stay_bit_identical_while_heads_train(runs: dict, foreign) -> None:
    checkpoints = _all_checkpoints(runs["frozen"])
    assert len(checkpoints) == (FOLDS + 1) * len(KINDS)
    for path in checkpoints:
        data = _checkpoint(path)
        assert data["finished"] and data["epoch"] == data["train_config"]["epochs"], path
        assert [r["phase"] for r in data["history"]] == ["frozen"] * data["epoch"], path
        video, audio = _as_files(data["model"], foreign)
        want_video = data["kind"] in ("fusion", "video")
        want_audio = data["kind"] in ("fusion", "audio")
        expected_video = {k: v for k, v in foreign.video_state.items() if not k.startswith("cls_head.")}
        expected_audio = {k: v for k, v in foreign.audio_state.items() if not k.startswith("pca_")}
        assert set(video) == (set(expected_video) if want_video else set()), path
        assert set(audio) == (set(expected_audio) if want_audio else set()), path
        for key, value in {**video, **audio}.items():
            want = expected_video.get(key, expected_audio.get(key))
            assert torch.equal(value, want), f"{path}: {key} changed while frozen"
        # Every head parameter moved from its initialisation (same seed, same builder).
        cfg = ModelConfig.from_dict(data["model_config"])
        start = initial_model(data["kind"], cfg, data["train_config"]["seed"])
        heads = [n for n, _ in start.named_parameters() if not n.startswith(VIDEO_PREFIXES + AUDIO_PREFIXES)]
        unchanged = [n for n in heads if torch.equal(start.state_dict()[n], data["model"][n])]
        assert heads and not unchanged, f"{path}: head parameters did not train: {unchanged}"


def test_log_says_what_trains_in_each_phase(runs: dict) -> None:
    frozen_log = (runs["frozen"] / "train.log").read_text()
    # The fusion model's frozen phase: both encoders 0 trainable, their full counts frozen.
    start = initial_model("fusion", ModelConfig.from_dict(json.loads((runs["frozen"] / "run.json").read_text())["model_config"]), 0)
    i3d = sum(p.numel() for p in start.encoders.video.backbone.parameters())
    vggish = sum(p.numel() for p in start.encoders.audio.vggish.parameters())
    assert re.search(rf"encoders\.video\.backbone\s+0\s+{i3d:,}\s+\(I3D-R50\)", frozen_log), frozen_log[:2000]
    assert re.search(rf"encoders\.audio\.vggish\s+0\s+{vggish:,}\s+\(VGGish\)", frozen_log)
    assert "everything trains" not in frozen_log  # frozen for all epochs
    unfrozen_log = (runs["unfrozen"] / "train.log").read_text()
    assert re.search(rf"encoders\.video\.backbone\s+{i3d:,}\s+0\s+\(I3D-R50\)", unfrozen_log), unfrozen_log[:3000]
    assert "epochs 2-2 of 2: everything trains; I3D-R50, VGGish at lr 0.0002 (x0.1)" in unfrozen_log


def test_unfreezing_fine_tunes_the_encoders(runs: dict, foreign) -> None:
    data = _checkpoint(runs["unfrozen"] / "final" / "fusion.pt")
    assert [r["phase"] for r in data["history"]] == ["frozen", "all"]
    video, audio = _as_files(data["model"], foreign)
    changed = [k for k, v in {**video, **audio}.items()
               if k.endswith(("weight", "bias")) and not torch.equal(v, foreign.video_state.get(k, foreign.audio_state.get(k)))]
    weights = [k for k in {**video, **audio} if k.endswith(("weight", "bias"))]
    assert len(changed) == len(weights), f"unchanged after fine-tuning: {sorted(set(weights) - set(changed))}"


def test_feature_cache_is_keyed_by_encoder_and_window_and_reused(runs: dict, cohort: Path) -> None:
    cache = runs["cache"]
    folders = sorted(p.name for p in cache.iterdir())
    assert [f.split("-")[0] for f in folders] == ["audio", "video"], folders
    samples = torch.load(next(runs["frozen"].glob("samples.tiny-*.pt")), weights_only=False)
    clips = samples["inputs"]["clip"]
    unique = len({hashlib.sha256(c.contiguous().numpy().tobytes()).hexdigest() for c in clips})
    video_dir = cache / folders[1]
    assert len(list(video_dir.glob("*.pt"))) == unique  # one entry per distinct window input, no more
    meta = json.loads((video_dir / "meta.json").read_text())
    assert meta["encoder_sha256"].startswith(folders[1].split("-")[1]) and meta["encoder"] == "I3DResNet"
    # The second run (same checkpoints) computed nothing: every file, with its bytes and mtime, as before.
    assert _snapshot(cache) == runs["cache_after_frozen"]


def test_final_models_and_cards(runs: dict, foreign) -> None:
    run = runs["frozen"]
    choice = json.loads((run / "cv_epochs.json").read_text())
    for kind in KINDS:
        curves = [[r["val_mae"] for r in json.loads((run / "checkpoints" / f"fold{f}" / f"{kind}.history.json").read_text())]
                  for f in range(FOLDS)]
        assert choice["kinds"][kind]["best_epoch"] == int(np.argmin(np.mean(curves, axis=0))) + 1
    final = run / "final" / "fusion.pt"
    model, cfg = load_estimator_checkpoint(final)  # what `neopain export` reads
    assert cfg.video.pixel_scale == 255.0
    card_path = card_beside(final)
    assert card_path == run / "final" / "model_card.json"
    card = read_card(card_path)  # the deploy side's reader accepts it
    assert card["model_version"] == "fusion-" + hashlib.sha256(final.read_bytes()).hexdigest()[:12]
    assert card["model_kind"] == "fusion" and card["model_config"] == "tiny"
    assert card["epochs_source"] == "cv" and card["epochs"] == choice["kinds"]["fusion"]["best_epoch"]
    assert _checkpoint(final)["epoch"] == card["epochs"] == card["train_config"]["epochs"]
    preds = np.genfromtxt(run / "predictions.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert card["cv_metrics"]["mae"] == pytest.approx(np.mean(np.abs(preds["pred_fusion"] - preds["nips_mean_rater"])), abs=1e-4)
    icc = card["cv_metrics"]["icc_a1"]
    assert icc["ci_low"] <= icc["value"] <= icc["ci_high"] and card["cv_metrics"]["folds"] == FOLDS
    data = card["data"]
    infants = {s: ga for s, ga in zip(preds["subject_id"], preds["gestational_age_weeks"])}
    assert data["infants"] == len(infants) and data["windows"] == len(preds)
    ga = data["gestational_age"]
    assert ga["preterm_infants"] == sum(v < 37 for v in infants.values()) and ga["preterm_infants"] + ga["term_infants"] == len(infants)
    assert sum(data["skin_tone_infants"].values()) == len(infants)
    assert set(data["modality_available_fraction"]) == {"video", "audio", "vitals"}
    assert [(i["modality"], i["sha256"]) for i in card["init_checkpoints"]] == [
        ("video", hashlib.sha256(foreign.video.read_bytes()).hexdigest()),
        ("audio", hashlib.sha256(foreign.audio.read_bytes()).hexdigest())]
    assert card["code_version"] and card["created_utc"].endswith("+00:00")
    assert card["model_version"] in (run / "final" / "model_card.md").read_text()
    video_card = json.loads((run / "final" / "model_card.video.json").read_text())
    assert video_card["model_kind"] == "video" and [i["modality"] for i in video_card["init_checkpoints"]] == ["video"]
    # Without CV in its run folder: --epochs, and no CV metrics.
    card = read_card(runs["unfrozen"] / "final" / "model_card.json")
    assert (card["epochs_source"], card["epochs"], card["cv_metrics"]) == ("--epochs", 2, None)


def test_wrong_architecture_checkpoint_exits_2_naming_key_and_shapes(tmp_path: Path, cohort: Path, foreign, capsys) -> None:
    import dataclasses

    from models.configs import tiny_config
    from models.video import create_i3d_r50

    cfg = tiny_config()
    wider = randomised(create_i3d_r50(dataclasses.replace(cfg.video, stem_dim=16, num_classes=0)))
    path = tmp_path / "wide_i3d.pth"
    torch.save({"state_dict": foreign_state(wider, to_mmaction2)}, path)
    run = tmp_path / "run"
    rc = main(["train", "--data", str(cohort), "--out", str(run), "--init-video", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "backbone.conv1.conv.weight -> blocks.0.conv.weight: checkpoint (16, 3, 5, 7, 7) vs model (8, 3, 5, 7, 7)" in err, err
    assert not run.exists()  # refused before anything was loaded or written

    a = cfg.audio
    vggish = TorchVGGish((a.vggish_channels[0] * 2,) + a.vggish_channels[1:], a.vggish_fc, a.embedding_dim)
    path = tmp_path / "wide_vggish.pth"
    torch.save(vggish.state_dict(), path)
    rc = main(["train", "--data", str(cohort), "--out", str(run), "--init-audio", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "features.0.weight: checkpoint (8, 1, 3, 3) vs model (4, 1, 3, 3)" in err, err
