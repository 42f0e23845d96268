"""Latent pain of a synthetic recording, the infant's behaviour it drives, and how raters score it.

Why a latent trajectory: every modality (face, cry, vitals) and every rater are rendered from the same
hidden pain curve, each through its own lag, noise and gaps. So a model can only beat a single modality
by fusing them, and rater disagreement is realistic (both raters see the same behaviour, with their own
bias and item-level noise) rather than independent random labels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from models.configs import NIPS_ITEMS

ITEM_NAMES: tuple[str, ...] = tuple(name for name, _ in NIPS_ITEMS)
# Behaviour level above which each item scores (cry has two thresholds: whimper, vigorous).
ITEM_THRESHOLDS: dict[str, tuple[float, ...]] = {
    "facial": (0.30,),
    "cry": (0.35, 0.65),
    "breathing": (0.50,),
    "arms": (0.45,),
    "legs": (0.40,),
    "arousal": (0.35,),
}
# name: (severity low, severity high) of the pain response it provokes.
PROCEDURES: dict[str, tuple[float, float]] = {
    "heel_lance": (0.65, 1.0),
    "venipuncture": (0.6, 1.0),
    "iv_insertion": (0.6, 1.0),
    "suctioning": (0.4, 0.8),
    "nasogastric_tube": (0.4, 0.75),
    "diaper_change": (0.1, 0.35),
}
GRID_HZ = 10.0
BEHAVIOUR_NOISE = 0.07  # item-to-item variation of the infant's behaviour around the latent pain
# Each rater's per-item perception noise. 0.10 gives a two-rater ICC(A,1) of the NIPS total of about
# 0.90-0.93, inside the 0.8-0.95 reported for trained NICU nurses; 0.06 gave ~0.95-0.97, too consistent.
RATER_NOISE = 0.10


@dataclass(frozen=True)
class Procedure:
    name: str
    t_s: float
    severity: float


@dataclass(frozen=True)
class PainScenario:
    """Latent pain on a 10 Hz grid of the recording clock, and the behaviour per rated window."""

    duration_s: float
    window_s: float
    t: np.ndarray  # (G,) seconds
    pain: np.ndarray  # (G,) in [0, 1]
    procedures: tuple[Procedure, ...]
    window_starts: np.ndarray  # (W,)
    behaviour: np.ndarray  # (W, 6) continuous behaviour level per NIPS item
    items: np.ndarray  # (W, 6) true NIPS items (behaviour thresholded)

    @property
    def n_windows(self) -> int:
        return len(self.window_starts)

    def pain_at(self, t: np.ndarray | float) -> np.ndarray:
        return np.interp(t, self.t, self.pain)

    def window_index(self, t: np.ndarray | float) -> np.ndarray:
        """Index of the rated window containing each time (clipped to the first/last window)."""
        idx = np.floor(np.asarray(t, dtype=np.float64) / self.window_s).astype(np.int64)
        return np.clip(idx, 0, self.n_windows - 1)

    def item_at(self, name: str, t: np.ndarray | float) -> np.ndarray:
        """True NIPS item level at each time (from the window containing it)."""
        return self.items[self.window_index(t), ITEM_NAMES.index(name)]

    @property
    def latent_per_window(self) -> np.ndarray:
        idx = self.window_index(self.t)
        return np.bincount(idx, weights=self.pain, minlength=self.n_windows) / np.maximum(
            np.bincount(idx, minlength=self.n_windows), 1)


def score_items(levels: np.ndarray) -> np.ndarray:
    """Behaviour levels (..., 6) -> NIPS items (..., 6) by the item thresholds."""
    out = np.zeros(levels.shape, dtype=np.int64)
    for j, name in enumerate(ITEM_NAMES):
        for thr in ITEM_THRESHOLDS[name]:
            out[..., j] += levels[..., j] > thr
    return out


def _response(t: np.ndarray, onset: float, rise_s: float, plateau_s: float, decay_s: float) -> np.ndarray:
    """Unit pain response: fast rise, plateau while the procedure lasts, exponential recovery."""
    x = t - onset
    r = np.where(x < 0, 0.0, 1.0 - np.exp(-np.maximum(x, 0) / rise_s))
    after = x - plateau_s
    return np.where(after > 0, r * np.exp(-np.maximum(after, 0) / decay_s), r)


def make_pain_scenario(rng: np.random.Generator, duration_s: float, window_s: float, *,
                       preterm: bool, procedures_per_recording: float = 1.5) -> PainScenario:
    """Draw procedures, a latent pain curve and per-window behaviour for one recording.

    The first procedure falls 20-45 % into the recording so every recording has calm windows before
    and a response after; preterm infants respond less (blunted behavioural response is well known).
    """
    n_windows = max(1, int(duration_s // window_s))
    t = np.arange(0.0, duration_s, 1.0 / GRID_HZ)
    reactivity = rng.uniform(0.55, 0.9) if preterm else rng.uniform(0.8, 1.1)

    n_proc = 1 + rng.poisson(max(procedures_per_recording - 1.0, 0.0))
    onsets = [rng.uniform(0.2, 0.45) * duration_s]
    for _ in range(n_proc - 1):
        nxt = onsets[-1] + rng.uniform(60.0, 120.0)
        if nxt > duration_s - 20.0:
            break
        onsets.append(nxt)
    names = list(PROCEDURES)
    procedures = []
    pain = np.zeros_like(t)
    for onset in onsets:
        name = names[rng.integers(len(names))]
        lo, hi = PROCEDURES[name]
        severity = float(rng.uniform(lo, hi))
        procedures.append(Procedure(name, float(onset), severity))
        curve = _response(t, onset, rise_s=rng.uniform(1.0, 3.0), plateau_s=rng.uniform(5.0, 25.0),
                          decay_s=rng.uniform(12.0, 40.0))
        pain = np.maximum(pain, severity * reactivity * curve)

    # Baseline restlessness: a slow Ornstein-Uhlenbeck wander plus rare spontaneous fussing.
    ou = lfilter([1.0], [1.0, -0.98], rng.normal(0.0, 0.012, size=len(t)))
    pain = pain + 0.06 + np.abs(ou)
    n_fuss = rng.poisson(duration_s / 300.0)
    for _ in range(n_fuss):
        pain = np.maximum(pain, rng.uniform(0.2, 0.45) * _response(
            t, rng.uniform(0, duration_s), 1.5, rng.uniform(3, 10), rng.uniform(5, 15)))
    pain = np.clip(pain, 0.0, 1.0)

    starts = np.arange(n_windows) * window_s
    idx = np.clip((t // window_s).astype(np.int64), 0, n_windows - 1)
    latent = np.bincount(idx, weights=pain, minlength=n_windows) / np.maximum(np.bincount(idx, minlength=n_windows), 1)
    behaviour = latent[:, None] + rng.normal(0.0, BEHAVIOUR_NOISE, size=(n_windows, len(ITEM_NAMES)))
    behaviour = np.clip(behaviour, 0.0, 1.0)
    return PainScenario(float(duration_s), float(window_s), t, pain, tuple(procedures), starts, behaviour,
                        score_items(behaviour))


def make_raters(rng: np.random.Generator, n_raters: int) -> dict[str, float]:
    """Rater id -> systematic bias (positive: scores more pain). Raters are a cohort-level trait.

    The bias shifts every item's perceived level, so it is kept small (SD 0.02, clipped to +-0.04,
    i.e. at most about half a NIPS point on the total): trained raters' mean totals differ little,
    and an unclipped SD of 0.05 let one seed's two raters differ by two points (inter-rater ICC 0.56).
    """
    return {f"R{i + 1}": float(np.clip(rng.normal(0.0, 0.02), -0.04, 0.04)) for i in range(n_raters)}


def simulate_ratings(rng: np.random.Generator, scenario: PainScenario, raters: dict[str, float]) -> list[dict]:
    """One row per (window, rater): the rater perceives behaviour + bias + item noise, then scores."""
    rows = []
    for w in range(scenario.n_windows):
        start = float(scenario.window_starts[w])
        for rater, bias in raters.items():
            seen = scenario.behaviour[w] + bias + rng.normal(0.0, RATER_NOISE, size=len(ITEM_NAMES))
            items = score_items(seen)
            row = {"window_start_s": start, "window_end_s": start + scenario.window_s, "rater_id": rater}
            row.update({name: int(v) for name, v in zip(ITEM_NAMES, items)})
            row["total"] = int(items.sum())
            rows.append(row)
    return rows


def write_ratings(path: Path, rows: list[dict]) -> None:
    """ratings.csv in the layout's column order."""
    columns = ["window_start_s", "window_end_s", "rater_id", *ITEM_NAMES, "total"]
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([f"{row['window_start_s']:g}", f"{row['window_end_s']:g}",
                             *[row[c] for c in columns[2:]]])
