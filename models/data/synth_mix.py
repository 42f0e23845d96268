"""A categorical mix option of the synthetic cohort: ``NAME=WEIGHT,...`` on the command line, validated once.

Why its own module: the skin-tone mix of the infants and the monitor mix of the recordings are the same kind
of option (what share of a second hospital's cohort is of each kind), so they are parsed, validated and drawn
by one piece of code, with one error wording.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Mix = tuple[tuple[str, float], ...]  # (name, weight) pairs; weights need not sum to 1


def validate_mix(where: str, mix: Mix, names: Sequence[str]) -> None:
    """Raise ValueError naming ``where`` unless ``mix`` is known names with finite weights >= 0, not all 0."""
    seen = set()
    for name, weight in mix:
        if name not in names:
            raise ValueError(f"{where}: unknown kind {name!r}; known: {', '.join(names)}")
        if name in seen:
            raise ValueError(f"{where}: {name!r} is given twice")
        seen.add(name)
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{where}: weight of {name!r} must be a number >= 0, got {weight!r}")
    if not mix or sum(w for _, w in mix) <= 0:
        raise ValueError(f"{where}: needs at least one kind with a weight > 0, got {format_mix(mix) or 'nothing'!r}")


def parse_mix(text: str, where: str, names: Sequence[str]) -> Mix:
    """``"A=0.5,B=0.5"`` -> (("A", 0.5), ("B", 0.5)), validated; kinds not named get weight 0."""
    pairs = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        name, sep, weight = part.partition("=")
        try:
            if not sep:
                raise ValueError
            pairs.append((name.strip(), float(weight)))
        except ValueError:
            raise ValueError(f"{where}: {part.strip()!r} is not NAME=WEIGHT (e.g. {names[0]}=1)") from None
    mix = tuple(pairs)
    validate_mix(where, mix, names)
    return mix


def format_mix(mix: Mix) -> str:
    """The command-line form of a mix."""
    return ",".join(f"{name}={weight:g}" for name, weight in mix)


def draw_kind(rng: np.random.Generator, mix: Mix, names: Sequence[str]) -> str:
    """One kind drawn with probability proportional to its weight (one uniform draw, whatever the mix)."""
    weights = np.array([dict(mix).get(name, 0.0) for name in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]
