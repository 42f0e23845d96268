"""The NIPS bands the web station colours scores by, defined once: the board's tiles, the chart's background
and the stylesheet (``/bands.css``, generated from here) all read this table.

Why by the rounded score: nurses score NIPS in whole points, and the usual reading is 0-2 no or mild pain,
3-4 moderate, more than 4 severe. A published score is continuous (e.g. 2.6), so it is banded as the whole
point it rounds to (half up): 2.6 reads as 3 and is shown moderate. The label always accompanies the colour,
so the band never depends on colour vision alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from models.vocabulary import NIPS_MAX


@dataclass(frozen=True)
class Band:
    """One NIPS band: its highest whole NIPS, its words and its colours (strong for tiles, tint for charts)."""

    key: str  # CSS class suffix: band-<key>
    label: str  # the NIPS range, e.g. "3-4"
    meaning: str  # for people: "moderate pain"
    upper: int  # highest whole NIPS in the band
    color: str  # tile background
    ink: str  # text on ``color`` (contrast >= 4.5:1)
    tint: str  # chart background behind the band's range


NIPS_BANDS: tuple[Band, ...] = (
    Band("low", "0-2", "no or mild pain", 2, "#1e7b34", "#ffffff", "#e3f2e6"),
    Band("moderate", "3-4", "moderate pain", 4, "#f4b400", "#000000", "#fff4d6"),
    Band("severe", "> 4", "severe pain", NIPS_MAX, "#c62828", "#ffffff", "#fbe0e0"),
)

#: A bed without a current score (stale, or never scored): grey, and no number is shown.
STALE_COLOR, STALE_INK = "#5f6368", "#ffffff"


def whole_nips(nips: float) -> int:
    """The whole NIPS point a continuous score reads as (half up, within 0..NIPS_MAX)."""
    return min(NIPS_MAX, max(0, math.floor(nips + 0.5)))


def band_of(nips: float) -> Band:
    """The band of a score (see the module docstring for why by the rounded value)."""
    whole = whole_nips(nips)
    return next(b for b in NIPS_BANDS if whole <= b.upper)


def band_floor(band: Band) -> float:
    """Where a band starts on the continuous axis of a chart (the half point above the band below)."""
    i = NIPS_BANDS.index(band)
    return 0.0 if i == 0 else NIPS_BANDS[i - 1].upper + 0.5


def band_ceiling(band: Band) -> float:
    return float(NIPS_MAX) if band.upper >= NIPS_MAX else band.upper + 0.5


def stylesheet() -> str:
    """``/bands.css``: the tile colours of every band and of stale beds, from the table above."""
    rules = [f".band-{b.key}{{background:{b.color};color:{b.ink}}}" for b in NIPS_BANDS]
    rules.append(f".band-stale,.band-none{{background:{STALE_COLOR};color:{STALE_INK}}}")
    rules += [f".swatch-{b.key}{{background:{b.color}}}" for b in NIPS_BANDS]
    return "\n".join(rules) + "\n"
