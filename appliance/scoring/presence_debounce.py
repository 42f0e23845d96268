"""Which modalities health reports as present: each window's presence, debounced over time.

Why: a window's audio is present only when the cry detector found a segment long enough for a log-Mel patch
(or the last seconds were audible), so a crying infant's audio comes and goes from one 2-s window to the next.
Health taken from each window alone flipped a bed between ``ok`` and ``degraded: scoring without audio`` 8
times in a 60-s demo; at a central station that is an alarm storm for nothing. So the *reported* presence of a
modality changes only after the windows have disagreed with it without a break for a set time:
``[scoring] modality_lost_after_s`` before "lost", ``modality_back_after_s`` before "back".

This is about the published health state only: every score still uses exactly what its own window has (and
says so in its ``modalities``); a modality missing from one window is left out of that window's score at once.
Times are the pipeline's monotonic window times (ns), so tests drive it with explicit times, no sleeping.
The first window with any modality present sets the reported state as it is: a bed that starts without its
monitor is ``degraded`` from its first score (and ``ok`` once the vitals have been back for
``modality_back_after_s``), not ``ok`` first and ``degraded`` ``modality_lost_after_s`` later. Windows before it
(nothing present: the sensors are still filling their windows, health says ``no_score``) set nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from appliance import clock
from appliance.config import default
from models.vocabulary import MODALITIES


@dataclass(frozen=True)
class DebounceConfig:
    """How long a change must last before health reports it (seconds; 0 = at once)."""

    lost_after_s: float = default("scoring", "modality_lost_after_s")
    back_after_s: float = default("scoring", "modality_back_after_s")

    def __post_init__(self) -> None:
        for name in ("lost_after_s", "back_after_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"DebounceConfig.{name}: expected seconds >= 0, got {value!r}")


class PresenceDebounce:
    """Reported presence per modality; :meth:`update` once per scored (or refused) window, in time order."""

    def __init__(self, config: DebounceConfig | None = None, modalities: tuple[str, ...] = MODALITIES) -> None:
        self.config = config or DebounceConfig()
        self._modalities = modalities
        self._reported: dict[str, bool] | None = None  # None until the first window with anything present
        self._since: dict[str, int | None] = {m: None for m in modalities}  # first window disagreeing, ns
        self._reasons: dict[str, str] = {}
        self._last_t: int | None = None

    def update(self, present: Mapping[str, bool], t_ns: int,
               reasons: Mapping[str, str] | None = None) -> dict[str, bool]:
        """Feed one window's presence at its time ``t_ns``; returns the reported presence after it.

        A window older than the last one fed (a clock that went back) is ignored: the reported state never
        changes on out-of-order input."""
        if self._last_t is not None and t_ns < self._last_t:
            return self.reported()
        self._last_t = t_ns
        if self._reported is None:
            if any(present.get(m, False) for m in self._modalities):
                self._reported = {m: bool(present.get(m, False)) for m in self._modalities}
                self._reasons = {m: str(reasons[m]) for m in self._modalities if not self._reported[m]
                                 and reasons and reasons.get(m) not in (None, "", "ok")}
            return self.reported()
        for m in self._reported:
            now = bool(present.get(m, False))
            if now:
                self._reasons.pop(m, None)
            elif reasons and reasons.get(m) not in (None, "", "ok"):
                self._reasons[m] = str(reasons[m])
            if now == self._reported[m]:
                self._since[m] = None
                continue
            since = self._since[m]
            if since is None:
                since = self._since[m] = t_ns
            hold = self.config.back_after_s if now else self.config.lost_after_s
            if t_ns - since >= clock.to_ns(hold):
                self._reported[m], self._since[m] = now, None
        return self.reported()

    def reported(self) -> dict[str, bool]:
        """Reported presence per modality (before the first window with anything present: none lost)."""
        return dict(self._reported) if self._reported is not None else {m: True for m in self._modalities}

    def lost(self) -> list[str]:
        """The modalities health reports as lost, in vocabulary order."""
        return [m for m, ok in self.reported().items() if not ok]

    def reason(self, modality: str) -> str | None:
        """Why ``modality`` was missing the last time a window said (for health's detail)."""
        return self._reasons.get(modality)
