"""Training/evaluation samples: model-ready tensors of many windows, with their labels and metadata.

Why a separate, stacked form: the dataset loader returns raw windows (frames, audio, vitals) so that
pre-processing stays in ``models.features``; training then needs the same windows as tensors many
times over. Converting once and stacking them (``SampleSet``) makes epochs cheap on a CPU, and the
metadata (infant, gestational age, skin tone, each rater's score) travels with every row so that
splits are by infant and the evaluation can group results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from models.estimator import INPUT_NAMES


@dataclass
class SampleSet:
    """N windows: ``inputs[name]`` is (N, ...) for each estimator input; labels and metadata per row."""

    inputs: dict[str, torch.Tensor]
    nips: torch.Tensor  # (N,) mean of raters, 0-7
    items: torch.Tensor  # (N, 6) mean item scores of raters
    rater_totals: np.ndarray  # (N, R) each rater's NIPS total (NaN where a rater did not score)
    subject_ids: np.ndarray  # (N,) str
    window_ids: np.ndarray  # (N,) str, unique
    gestational_age_weeks: np.ndarray  # (N,) float
    skin_tone_groups: np.ndarray  # (N,) str ("" unknown)
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [n for n in INPUT_NAMES if n not in self.inputs]
        if missing:
            raise ValueError(f"SampleSet inputs miss {missing}")
        n = len(self.nips)
        for name, value in [*self.inputs.items(), ("items", self.items), ("rater_totals", self.rater_totals),
                            ("subject_ids", self.subject_ids), ("window_ids", self.window_ids),
                            ("gestational_age_weeks", self.gestational_age_weeks),
                            ("skin_tone_groups", self.skin_tone_groups), *self.extra.items()]:
            if len(value) != n:
                raise ValueError(f"SampleSet field {name} has {len(value)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.nips)

    def subset(self, index: np.ndarray | Sequence[int]) -> "SampleSet":
        idx = np.asarray(index, dtype=np.int64)
        t = torch.from_numpy(idx)
        return SampleSet(
            inputs={k: v[t] for k, v in self.inputs.items()},
            nips=self.nips[t],
            items=self.items[t],
            rater_totals=self.rater_totals[idx],
            subject_ids=self.subject_ids[idx],
            window_ids=self.window_ids[idx],
            gestational_age_weeks=self.gestational_age_weeks[idx],
            skin_tone_groups=self.skin_tone_groups[idx],
            extra={k: v[idx] for k, v in self.extra.items()},
        )

    def batch(self, index: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        return {k: self.inputs[k][index] for k in INPUT_NAMES}, self.nips[index], self.items[index]

    def save(self, path: str | Path) -> None:
        torch.save(
            {
                "inputs": self.inputs,
                "nips": self.nips,
                "items": self.items,
                "meta": {
                    "rater_totals": self.rater_totals,
                    "subject_ids": self.subject_ids.tolist(),
                    "window_ids": self.window_ids.tolist(),
                    "gestational_age_weeks": self.gestational_age_weeks,
                    "skin_tone_groups": self.skin_tone_groups.tolist(),
                    "extra": {k: v.tolist() for k, v in self.extra.items()},
                },
            },
            path,
        )

    @staticmethod
    def load(path: str | Path) -> "SampleSet":
        data = torch.load(path, map_location="cpu", weights_only=False)
        meta = data["meta"]
        return SampleSet(
            inputs=data["inputs"],
            nips=data["nips"],
            items=data["items"],
            rater_totals=np.asarray(meta["rater_totals"], dtype=float),
            subject_ids=np.asarray(meta["subject_ids"], dtype=str),
            window_ids=np.asarray(meta["window_ids"], dtype=str),
            gestational_age_weeks=np.asarray(meta["gestational_age_weeks"], dtype=float),
            skin_tone_groups=np.asarray(meta["skin_tone_groups"], dtype=str),
            extra={k: np.asarray(v) for k, v in meta["extra"].items()},
        )


def subject_folds(subject_ids: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of the k test folds, split by infant: an infant's windows never span two folds.

    Infants are shuffled (seeded) and dealt round-robin, so folds differ by at most one infant.
    """
    subjects = np.unique(subject_ids)
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if len(subjects) < k:
        raise ValueError(f"{len(subjects)} infants cannot fill {k} folds")
    order = np.random.default_rng(seed).permutation(subjects)
    return [np.flatnonzero(np.isin(subject_ids, order[i::k])) for i in range(k)]


def samples_from_windows(windows: Sequence["Window"], cfg: "ModelConfig", progress: bool = True) -> SampleSet:  # noqa: F821
    """Pre-process dataset windows (``models.data.loader.Window``) into a stacked :class:`SampleSet`."""
    from tqdm import tqdm

    from models.configs import NIPS_ITEMS
    from models.features.inputs import RawWindow, model_inputs

    if not windows:
        raise ValueError("no windows to convert")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in INPUT_NAMES}
    raters = sorted({r for w in windows for r in w.label.rater_totals})
    totals = np.full((len(windows), len(raters)), np.nan)
    for i, w in enumerate(tqdm(windows, desc="pre-processing windows", unit="window", disable=not progress)):
        vit = w.vitals
        spo2_t = np.asarray(vit.t_s, dtype=float)
        raw = RawWindow(
            end_s=float(vit.window_s),
            frames=w.frames,
            audio=w.audio,
            audio_rate=int(w.audio_rate),
            rr_ms=np.asarray(vit.rr_ms, dtype=float),
            rr_times_s=np.asarray(vit.beat_t_s, dtype=float),
            spo2_pct=np.asarray(vit.spo2_pct, dtype=float),
            spo2_times_s=spo2_t,
            presence=w.presence.mask(),
        )
        for name, value in model_inputs(raw, cfg).items():
            rows[name].append(value)
        for j, rater in enumerate(raters):
            if rater in w.label.rater_totals:
                totals[i, j] = w.label.rater_totals[rater]
    inputs = {name: torch.from_numpy(np.stack(values)) for name, values in rows.items()}
    inputs["audio_pad_mask"] = inputs["audio_pad_mask"].bool()
    return SampleSet(
        inputs=inputs,
        nips=torch.tensor([w.label.total for w in windows], dtype=torch.float32),
        items=torch.tensor([[w.label.items[n] for n, _ in NIPS_ITEMS] for w in windows], dtype=torch.float32),
        rater_totals=totals,
        subject_ids=np.array([w.subject.subject_id for w in windows], dtype=str),
        window_ids=np.array([f"{w.subject.subject_id}/{w.recording_id}/{w.index}" for w in windows], dtype=str),
        gestational_age_weeks=np.array([w.subject.gestational_age_weeks for w in windows], dtype=float),
        skin_tone_groups=np.array([w.subject.skin_tone_group or "" for w in windows], dtype=str),
    )
