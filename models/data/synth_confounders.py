"""Cross-modal confounders of a real NICU, drawn once per recording and shared by the modalities they touch.

Why one module: a confounder is realistic only when the modalities agree about it the way a ward makes them
agree (the limb movement the camera sees is the one that disturbs the pulse oximeter) or disagree the way a
ward makes them disagree (another infant's cry is heard but not seen; an intubated infant's cry is seen but
not heard). So each event schedule is drawn here, once, from its own seeded stream, handed to the renderer
of every modality it touches, and marked per rated window in ``truth.csv`` (``confounder_*`` columns, 0/1)
so that evaluation can report the error on the windows each confounder affects. Each has a switch in
:class:`ConfounderOptions`; docs/dataset.md gives the clinical source of each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from models.data.loader import MIN_HR_FILL, VITALS_WINDOW_S, hr_numerics_valid
from models.data.synth_ratings import ITEM_NAMES, ITEM_THRESHOLDS, PainScenario

CONFOUNDER_PREFIX = "confounder_"  # truth.csv columns marking a per-window confounder (0/1)
NEIGHBOUR_CRY = CONFOUNDER_PREFIX + "neighbour_cry"
MOTION_ARTEFACT = CONFOUNDER_PREFIX + "motion_artefact"
MONITOR_DROPOUT = CONFOUNDER_PREFIX + "monitor_dropout"
SILENT_CRY = CONFOUNDER_PREFIX + "silent_cry"
LAG = CONFOUNDER_PREFIX + "lag"
CONFOUNDER_COLUMNS: tuple[str, ...] = (NEIGHBOUR_CRY, MOTION_ARTEFACT, MONITOR_DROPOUT, SILENT_CRY, LAG)

# A window counts as touched by an event that overlaps it at least this long (s): half a second of another
# infant's cry is what the cry detector can already call a cry (models/features/cry.py needs 0.25 s).
MIN_OVERLAP_S = 0.5
# The window's lagged heart-rate drive and its behaviour (both in latent-pain units 0..1) differ by more than
# this: the vitals still show a response that has ended, or not yet the one that has begun.
LAG_MARK = 0.15
# Limb movements: in every window whose arms or legs item is scored, with this probability (s long) ...
PAIN_MOVE_PROBABILITY = 0.7
PAIN_MOVE_S = (1.5, 5.0)
# ... and spontaneous movements (startles, stretches) of a calm infant, per minute (s long).
SPONTANEOUS_MOVES_PER_MIN = 0.6
SPONTANEOUS_MOVE_S = (1.0, 3.0)
# A neighbour's cry bout (s long) and the bursts it is made of (s long, s apart), as for a vigorous cry.
NEIGHBOUR_BOUT_S = (3.0, 12.0)
NEIGHBOUR_BURST_S = (0.6, 1.5)
NEIGHBOUR_GAP_S = (0.2, 0.6)


@dataclass(frozen=True)
class ConfounderOptions:
    """The switches of the cross-modal confounders (docs/dataset.md has what each does and why).

    All on by default: the cohort is for training and judging a model that will meet them at the bedside.
    ``off()`` gives the clean cohort (every modality a faithful witness of the same behaviour).
    """

    neighbour_cries_per_min: float = 0.5  # another infant's cry bouts heard in an open bay; 0 = single room
    neighbour_level_db: tuple[float, float] = (-10.0, -4.0)  # their level relative to this infant's vigorous cry
    motion_artefacts: bool = True  # SpO2 / HR artefacts during the limb movements the camera sees
    artefact_probability: float = 0.7  # share of limb movements that disturb the probe or the ECG
    physiological_lag: bool = True  # HR/SpO2 respond seconds after the behaviour and outlast it; cry after grimace
    silent_cry: bool = True  # an intubated infant's rated cry shows on its face (mouth open around the tube)
    monitor_dropouts_per_min: float = 0.15  # monitor link lost long enough to invalidate whole vitals windows
    dropout_s: tuple[float, float] = (26.0, 60.0)  # their length (raised to what invalidates a whole window)

    def __post_init__(self) -> None:
        for name in ("neighbour_cries_per_min", "monitor_dropouts_per_min"):
            value = getattr(self, name)
            if not 0.0 <= value <= 30.0:  # NaN fails too
                raise ValueError(f"{_where(name)} must be between 0 and 30 per minute, got {value!r}")
        if not 0.0 <= self.artefact_probability <= 1.0:
            raise ValueError(f"{_where('artefact_probability')} must be in [0, 1], got {self.artefact_probability!r}")
        lo, hi = self.neighbour_level_db
        if not -40.0 <= lo <= hi <= 20.0:
            raise ValueError(f"{_where('neighbour_level_db')} must be LOW,HIGH with -40 <= LOW <= HIGH <= 20 dB, "
                             f"got {lo!r},{hi!r}")
        lo, hi = self.dropout_s
        if not 1.0 <= lo <= hi <= 3600.0:
            raise ValueError(f"{_where('dropout_s')} must be LOW,HIGH with 1 <= LOW <= HIGH <= 3600 s, got {lo!r},{hi!r}")

    def off(self) -> "ConfounderOptions":
        """Every confounder switched off (the clean cohort)."""
        return replace(self, neighbour_cries_per_min=0.0, motion_artefacts=False, physiological_lag=False,
                       silent_cry=False, monitor_dropouts_per_min=0.0)


def _where(name: str) -> str:
    """A field's name as the message names it: the dataclass field and the ``neopain synth`` option."""
    return f"ConfounderOptions.{name} (--{name.replace('_', '-')})"


@dataclass(frozen=True)
class LimbMove:
    """One limb movement: the arm waves into the camera's view at the bottom of the frame (side -1 left, +1 right)."""

    start_s: float
    end_s: float
    side: int
    freq_hz: float
    phase: float


@dataclass(frozen=True)
class NeighbourBurst:
    """One burst of another infant's cry, on the recording clock, at a level relative to a vigorous cry (dB)."""

    start_s: float
    end_s: float
    level_db: float


@dataclass(frozen=True)
class RecordingEvents:
    """Everything one recording's modalities share beyond the pain scenario."""

    limb_moves: tuple[LimbMove, ...]
    artefacts: tuple[tuple[float, float], ...]  # spans of SpO2/HR artefact (each within or just after a move)
    neighbour: tuple[NeighbourBurst, ...]
    dropouts: tuple[tuple[float, float], ...]  # monitor link lost: nothing arrives from the monitor

    def as_metadata(self) -> dict[str, list]:
        """The event spans for recording.json (synthetic metadata; readers keep it and never need it)."""
        def spans(pairs: Sequence[tuple[float, float]]) -> list[list[float]]:
            return [[round(a, 2), round(b, 2)] for a, b in pairs]

        return {"limb_moves": spans([(m.start_s, m.end_s) for m in self.limb_moves]),
                "motion_artefacts": spans(self.artefacts),
                "neighbour_cries": spans([(b.start_s, b.end_s) for b in self.neighbour]),
                "monitor_dropouts": spans(self.dropouts)}


def draw_limb_moves(rng: np.random.Generator, scenario: PainScenario, start_s: float, end_s: float) -> list[LimbMove]:
    """Limb movements: likely in windows whose arms or legs item is scored, occasional in calm ones.

    Behaviour, not a confounder: they are always drawn, and the camera always sees them.
    """
    arms, legs = ITEM_NAMES.index("arms"), ITEM_NAMES.index("legs")
    spans = []
    for w in range(scenario.n_windows):
        hit = rng.random() < PAIN_MOVE_PROBABILITY
        a = float(scenario.window_starts[w]) + rng.uniform(0.0, max(scenario.window_s - 1.0, 0.0))
        length = rng.uniform(*PAIN_MOVE_S)
        if hit and scenario.items[w, arms] + scenario.items[w, legs] > 0:
            spans.append((a, a + length))
    duration = end_s - start_s
    for _ in range(rng.poisson(SPONTANEOUS_MOVES_PER_MIN * duration / 60.0)):
        a = start_s + rng.uniform(0.0, duration)
        spans.append((a, a + rng.uniform(*SPONTANEOUS_MOVE_S)))
    moves = [LimbMove(float(a), float(b), int(rng.choice((-1, 1))), float(rng.uniform(1.0, 2.0)),
                      float(rng.uniform(0.0, 2 * np.pi))) for a, b in sorted(spans)]
    return moves


def draw_artefacts(rng: np.random.Generator, moves: Sequence[LimbMove],
                   options: ConfounderOptions) -> list[tuple[float, float]]:
    """Which limb movements disturb the monitor: each with ``artefact_probability``, outlasting the movement by up
    to 2 s (the oximeter's averaging). None when motion artefacts are off."""
    out = []
    for m in moves:
        hit = rng.random() < options.artefact_probability
        tail = rng.uniform(0.0, 2.0)
        if hit and options.motion_artefacts:
            out.append((m.start_s, m.end_s + tail))
    return out


def draw_neighbour_cries(rng: np.random.Generator, start_s: float, end_s: float,
                         options: ConfounderOptions) -> list[NeighbourBurst]:
    """Another infant's cry bouts at random times (independent of this infant), each a train of vigorous bursts."""
    duration = end_s - start_s
    bursts = []
    for _ in range(rng.poisson(options.neighbour_cries_per_min * duration / 60.0)):
        t = start_s + rng.uniform(0.0, duration)
        bout_end = min(t + rng.uniform(*NEIGHBOUR_BOUT_S), end_s)
        level = float(rng.uniform(*options.neighbour_level_db))
        while t < bout_end:
            length, gap = rng.uniform(*NEIGHBOUR_BURST_S), rng.uniform(*NEIGHBOUR_GAP_S)
            bursts.append(NeighbourBurst(float(t), float(min(t + length, bout_end)), level))
            t += length + gap
    return sorted(bursts, key=lambda b: b.start_s)


def min_dropout_s(window_s: float) -> float:
    """The shortest monitor dropout sure to invalidate a whole vitals window (by the loader's rule), wherever it
    starts: HR missing for more than ``(1 - MIN_HR_FILL)`` of the 30 s at the end of some rated window."""
    return (1.0 - MIN_HR_FILL) * VITALS_WINDOW_S + window_s + 1.0


def draw_dropouts(rng: np.random.Generator, scenario: PainScenario,
                  options: ConfounderOptions) -> list[tuple[float, float]]:
    """Monitor dropouts after the first rated window, each long enough to invalidate at least one whole vitals
    window and ending by the last rated window's end (so that window is invalid too). A recording too short to
    hold one gets none."""
    last_end = scenario.n_windows * scenario.window_s
    lo = max(options.dropout_s[0], min_dropout_s(scenario.window_s))
    out = []
    for _ in range(rng.poisson(options.monitor_dropouts_per_min * scenario.duration_s / 60.0)):
        hi = min(options.dropout_s[1], last_end - scenario.window_s)
        length = rng.uniform(lo, max(hi, lo))
        start = rng.uniform(scenario.window_s, max(last_end - length, scenario.window_s))
        if hi >= lo:
            out.append((float(start), float(start + length)))
    return sorted(out)


def draw_events(streams: Sequence[np.random.Generator], scenario: PainScenario, start_s: float, end_s: float,
                options: ConfounderOptions) -> RecordingEvents:
    """One recording's events from four independent streams (limbs, artefacts, neighbour, dropouts), so that a
    switch changes only what it is about."""
    s_limbs, s_artefact, s_neighbour, s_dropout = streams
    moves = draw_limb_moves(s_limbs, scenario, start_s, end_s)
    return RecordingEvents(tuple(moves), tuple(draw_artefacts(s_artefact, moves, options)),
                           tuple(draw_neighbour_cries(s_neighbour, start_s, end_s, options)),
                           tuple(draw_dropouts(s_dropout, scenario, options)))


# --------------------------------------------------------------------------------------------- truth marks


def _overlap(a0: float, a1: float, spans: Sequence[tuple[float, float]]) -> float:
    return float(sum(max(0.0, min(a1, b1) - max(a0, b0)) for b0, b1 in spans))


def cry_episode_starts(scenario: PainScenario) -> np.ndarray:
    """Windows where a cry begins (cry item > 0, and 0 in the window before): where cry latency shows."""
    cry = scenario.items[:, ITEM_NAMES.index("cry")] > 0
    return cry & ~np.concatenate([[False], cry[:-1]])


def grimace_onset(scenario: PainScenario, window: int) -> float:
    """When the face starts to grimace in a window: the first moment the latent pain crosses the facial item's
    threshold inside it, or the window start when it is already above (or never crosses)."""
    s0 = float(scenario.window_starts[window])
    inside = (scenario.t >= s0) & (scenario.t < s0 + scenario.window_s)
    above = scenario.pain[inside] > ITEM_THRESHOLDS["facial"][0]
    if not above.any() or above[0]:
        return s0
    return float(scenario.t[inside][int(np.argmax(above))])


def confounder_marks(scenario: PainScenario, events: RecordingEvents, *, intubated: bool, options: ConfounderOptions,
                     hr_drive: np.ndarray, numerics_t: np.ndarray, hr_present: np.ndarray) -> dict[str, np.ndarray]:
    """0/1 per rated window for every column of :data:`CONFOUNDER_COLUMNS`.

    ``hr_drive``: the lagged pain driving the heart rate, averaged per window; ``numerics_t`` / ``hr_present``:
    the monitor's numerics rows on the recording clock and whether each holds an HR, as written to vitals.csv
    (the dropout mark applies the loader's own validity rule to them).
    """
    n = scenario.n_windows
    starts = scenario.window_starts
    ends = starts + scenario.window_s
    neighbour = [(b.start_s, b.end_s) for b in events.neighbour]
    marks = {c: np.zeros(n, dtype=np.int64) for c in CONFOUNDER_COLUMNS}
    numerics_dt = float(np.median(np.diff(numerics_t))) if numerics_t.size > 1 else 1.0
    cry = scenario.items[:, ITEM_NAMES.index("cry")] > 0
    first_cry = cry_episode_starts(scenario)
    for w in range(n):
        s0, s1 = float(starts[w]), float(ends[w])
        marks[NEIGHBOUR_CRY][w] = _overlap(s0, s1, neighbour) >= MIN_OVERLAP_S
        marks[MOTION_ARTEFACT][w] = _overlap(s0, s1, events.artefacts) >= MIN_OVERLAP_S
        v0 = s1 - VITALS_WINDOW_S
        in_span = (numerics_t > v0) & (numerics_t <= s1)
        valid = hr_numerics_valid(int(hr_present[in_span].sum()), VITALS_WINDOW_S, numerics_dt)
        marks[MONITOR_DROPOUT][w] = (not valid) and _overlap(v0, s1, events.dropouts) > 0.0
        marks[SILENT_CRY][w] = intubated and bool(cry[w])
        lagging = abs(float(hr_drive[w]) - float(scenario.latent_per_window[w])) > LAG_MARK
        marks[LAG][w] = options.physiological_lag and (lagging or bool(first_cry[w]))
    return marks

