"""The model card of a final model: what it was trained on, how, from which weights, and how well CV did.

CONTRACT (read by ``models/card.py``: ``neopain export`` carries the card into the manifest, the daemon names
it, ``neopain evaluate`` takes the training median from it). ``RUN/final/model_card.json`` describes
``RUN/final/fusion.pt``; a baseline kind ``K`` trained with ``--final`` gets ``model_card.K.json`` (+ ``.md``)
beside ``K.pt`` (:func:`models.card.card_name`). The JSON object has at least:

* ``model_version`` (str): ``"<kind>-<first 12 hex of the sha256 of the saved checkpoint file>"``;
* ``model_kind`` (str): fusion | video | audio | vitals | early;
* ``model_config`` (str): the network size's name (tiny | full | a config's own name); the whole config is
  under ``network`` and inside the checkpoint;
* ``created_utc`` (str, ISO 8601, seconds, ``+00:00``);
* ``code_version`` (str): ``git describe --always --dirty --tags`` of the source tree when it is a git
  checkout, else the installed package's version; ``code_version_source`` says which;
* ``train_config`` (dict): :class:`models.training.config.TrainConfig` as trained (its ``epochs`` is the
  final model's);
* ``epochs`` (int) and ``epochs_source`` (str): ``"cv"`` (the CV run in the same run folder chose them, rule
  and per-epoch curve under ``epochs_choice``) or ``"--epochs"`` (no usable CV in the run folder);
* ``data`` (dict): ``infants``, ``windows``, ``gestational_age`` (``preterm_infants``, ``term_infants``,
  ``preterm_below_weeks``, ``min_weeks``, ``max_weeks``), ``skin_tone_infants`` (group -> infants, ``unknown``
  for none given), ``modality_available_fraction`` (video / audio / vitals -> share of windows),
  ``nips_median`` and ``nips_mean`` (mean-rater NIPS of the training windows);
* ``init_checkpoints`` (list): one ``{modality, path, format, sha256, loaded, missing, unexpected}`` per
  ``--init-*`` file the model's encoders were filled from (empty: trained from scratch);
* ``cv_metrics`` (dict or null): from the run folder's out-of-fold ``predictions.csv`` for this kind: ``mae``,
  ``rmse``, ``icc_a1`` (``{value, ci_low, ci_high}``: ICC(A,1) with its 95 % CI, McGraw & Wong, as
  :mod:`models.stats` computes it for the evaluation report), ``n_windows``, ``n_infants``, ``folds``,
  ``source``; null without cross-validation.

``model_card.md`` says the same for a person.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.metadata
import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from models import stats
from models.card import card_name
from models.configs import MODALITIES, ModelConfig
from models.data.layout import PRETERM_WEEKS
from models.engines.cache import sha256_file
from models.samples import SampleSet
from models.training.config import TrainConfig
from models.training.init import InitCheckpoint

VERSION_HEX = 12
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def model_version(kind: str, checkpoint: Path) -> str:
    return f"{kind}-{sha256_file(checkpoint)[:VERSION_HEX]}"


def code_version() -> tuple[str, str]:
    """(version, where it came from): git describe of the source tree, else the package version."""
    if (_SOURCE_ROOT / ".git").exists():
        try:
            done = subprocess.run(["git", "-C", str(_SOURCE_ROOT), "describe", "--always", "--dirty", "--tags"],
                                  capture_output=True, text=True, timeout=10)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.strip(), "git describe"
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return importlib.metadata.version("neopain"), "package version"
    except importlib.metadata.PackageNotFoundError:
        return "unknown", "none"


def data_summary(samples: SampleSet) -> dict[str, Any]:
    """Who and what the model was trained on (per infant for GA and skin tone, per window for modalities)."""
    subjects, first = np.unique(samples.subject_ids, return_index=True)
    ga = samples.gestational_age_weeks[first]
    tones, counts = np.unique([t or "unknown" for t in samples.skin_tone_groups[first]], return_counts=True)
    presence = samples.inputs["presence"].numpy()
    nips = samples.nips.numpy()
    return {
        "infants": int(len(subjects)),
        "windows": int(len(samples)),
        "gestational_age": {
            "preterm_infants": int((ga < PRETERM_WEEKS).sum()),
            "term_infants": int((ga >= PRETERM_WEEKS).sum()),
            "preterm_below_weeks": PRETERM_WEEKS,
            "min_weeks": round(float(ga.min()), 1),
            "max_weeks": round(float(ga.max()), 1),
        },
        "skin_tone_infants": {str(t): int(c) for t, c in zip(tones, counts)},
        "modality_available_fraction": {m: round(float(presence[:, i].mean()), 4) for i, m in enumerate(MODALITIES)},
        "nips_median": round(float(np.median(nips)), 4),
        "nips_mean": round(float(np.mean(nips)), 4),
    }


def cv_metrics(run_dir: Path, kind: str) -> dict[str, Any] | None:
    """MAE, RMSE and ICC(A,1) with 95 % CI of ``kind``'s out-of-fold predictions in ``run_dir``, or None."""
    path = run_dir / "predictions.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = f"pred_{kind}"
    if not rows or column not in rows[0]:
        return None
    pred = np.array([float(r[column]) for r in rows])
    ref = np.array([float(r["nips_mean_rater"]) for r in rows])
    icc = stats.icc_absolute(np.stack([pred, ref], axis=1))
    return {
        "mae": round(stats.mae(pred, ref), 4),
        "rmse": round(stats.rmse(pred, ref), 4),
        "icc_a1": {"value": round(icc.value, 4), "ci_low": round(icc.ci_low, 4), "ci_high": round(icc.ci_high, 4)},
        "n_windows": len(rows),
        "n_infants": len({r["subject_id"] for r in rows}),
        "folds": len({r["fold"] for r in rows}),
        "source": str(path),
    }


def build_card(kind: str, checkpoint: Path, cfg: ModelConfig, train_cfg: TrainConfig, samples: SampleSet,
               inits: list[InitCheckpoint], epochs_source: str, epochs_choice: dict | None, run_dir: Path) -> dict[str, Any]:
    version, version_source = code_version()
    owned = _owned_modalities(kind)
    return {
        "model_version": model_version(kind, checkpoint),
        "model_kind": kind,
        "model_config": cfg.name,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": version,
        "code_version_source": version_source,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": sha256_file(checkpoint),
        "train_config": asdict(train_cfg),
        "epochs": int(train_cfg.epochs),
        "epochs_source": epochs_source,
        "epochs_choice": epochs_choice,
        "data": data_summary(samples),
        "init_checkpoints": [i.report() for i in inits if i.modality in owned],
        "cv_metrics": cv_metrics(run_dir, kind),
        "network": cfg.to_dict(),
    }


def _owned_modalities(kind: str) -> set[str]:
    return {"fusion": {"video", "audio"}, "early": {"video", "audio"}, "video": {"video"}, "audio": {"audio"}}.get(kind, set())


def write_card(card: dict[str, Any], folder: Path) -> Path:
    """``model_card[.<kind>].json`` and ``.md`` in ``folder`` (atomic); returns the JSON's path."""
    kind = card["model_kind"]
    path = folder / card_name(kind)
    for target, text in ((path, json.dumps(card, indent=1)), (folder / card_name(kind, ".md"), card_markdown(card))):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    return path


def _schedule_line(tc: dict[str, Any]) -> str:
    frozen, epochs, scale = tc["freeze_encoders"], tc["epochs"], tc["encoder_lr_scale"]
    if frozen >= epochs:
        return f"- pretrained encoders (I3D, VGGish) frozen for all {epochs} epochs"
    if frozen:
        return f"- pretrained encoders frozen for the first {frozen} epochs, then fine-tuned at {scale:g} × lr"
    return f"- encoders trained from the start at {scale:g} × lr"


def card_markdown(card: dict[str, Any]) -> str:
    data, tc, cv = card["data"], card["train_config"], card["cv_metrics"]
    ga = data["gestational_age"]
    lines = [
        f"# Model card: {card['model_version']}",
        "",
        f"- kind: **{card['model_kind']}**, network size **{card['model_config']}**, file `{card['checkpoint']}` "
        f"(sha256 `{card['checkpoint_sha256'][:16]}…`)",
        f"- trained {card['created_utc']} with neopain {card['code_version']} ({card['code_version_source']})",
        "- a research model: its scores are not clinical estimates until validated on the site's own ratings",
        "",
        "## Training data",
        "",
        f"- {data['infants']} infants, {data['windows']} rated windows; median mean-rater NIPS {data['nips_median']:g}",
        f"- gestational age {ga['min_weeks']:g}–{ga['max_weeks']:g} weeks: {ga['preterm_infants']} preterm "
        f"(< {ga['preterm_below_weeks']:g} w), {ga['term_infants']} term",
        "- skin tone (infants): " + ", ".join(f"{k} {v}" for k, v in data["skin_tone_infants"].items()),
        "- modality available (share of windows): "
        + ", ".join(f"{k} {v:.0%}" for k, v in data["modality_available_fraction"].items()),
        "",
        "## Training",
        "",
        f"- {card['epochs']} epochs ({'chosen by cross-validation: ' + card['epochs_choice']['rule'] if card['epochs_source'] == 'cv' else 'from --epochs: no cross-validation in this run folder'})",
        f"- batch {tc['batch_size']} in "
        + (f"{tc['micro_batches']} micro-batches" if tc["micro_batches"] else "one micro-batch per process")
        + f", lr {tc['lr']:g}, weight decay {tc['weight_decay']:g}, seed {tc['seed']}",
        _schedule_line(tc),
        "",
        "## Initial weights",
        "",
    ]
    if card["init_checkpoints"]:
        lines += ["| modality | file | format | sha256 | loaded | missing | unexpected |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {i['modality']} | `{i['path']}` | {i['format']} | `{i['sha256'][:16]}…` | {i['loaded']} | "
                  f"{len(i['missing'])} | {len(i['unexpected'])} |" for i in card["init_checkpoints"]]
    else:
        lines.append("- none: every network trained from random initialisation")
    lines += ["", "## Cross-validation", ""]
    if cv:
        icc = cv["icc_a1"]
        lines += [f"Out-of-fold, {cv['folds']} subject-wise folds, {cv['n_infants']} infants, {cv['n_windows']} windows "
                  f"(`{cv['source']}`):", "",
                  "| MAE | RMSE | ICC(A,1) [95 % CI] |", "|---|---|---|",
                  f"| {cv['mae']:.3f} | {cv['rmse']:.3f} | {icc['value']:.3f} [{icc['ci_low']:.3f}, {icc['ci_high']:.3f}] |"]
    else:
        lines.append("- none: this model was trained without cross-validation in its run folder")
    return "\n".join(lines) + "\n"
