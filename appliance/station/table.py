"""The station's table as text: a pure function from bed states (``appliance.station.board``) and a given
``now`` to the screen, with no clock and no terminal, so every cell can be tested exactly.

Safety rule of the table: a score older than ``stale_after_s`` (by ``board.score_age_s``, which takes the
larger of the device's and the station's view of its age) is displayed as *stale* with its age, never as a
current value, and no trend arrow is drawn from stale data.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from appliance.mqtt import messages
from appliance.station.board import TREND_NONE, BedState, score_age_s, trend

_MOD_ABBR = {"video": "V", "audio": "A", "vitals": "H"}  # H: heart (vitals), V video, A audio
_RED, _YELLOW, _RESET = "\x1b[31m", "\x1b[33m", "\x1b[0m"
COLUMNS = ("BED", "NIPS", "0-10", "TREND", "AGE", "STATUS", "HEALTH", "INPUTS")


def format_age(seconds: float | None) -> str:
    """A short age for a narrow column: ``42s``, ``3m05s``, ``2h10m``, ``1d04h``, or ``never``."""
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass(frozen=True)
class Row:
    """One table row as text cells plus what it means (for colouring and for tests)."""

    cells: tuple[str, ...]
    stale: bool
    offline: bool
    nips: float | None


def bed_row(bed: BedState, now: datetime, *, stale_after_s: float, trend_window_s: float) -> Row:
    """The cells of one bed. A stale (or never received) score shows no value and no trend."""
    last = bed.last
    age = None if last is None else score_age_s(last, now)
    stale = last is None or age is None or age > stale_after_s
    if last is None:
        nips_cell, int_cell, arrow = "-", "-", TREND_NONE
    elif stale:
        nips_cell, int_cell, arrow = "stale", "-", TREND_NONE
    else:
        nips_cell, int_cell = f"{last.nips:.1f}", f"{last.intensity:.1f}"
        arrow = trend(list(bed.scores), now, window_s=trend_window_s)
    health = "?"
    if bed.health:
        health = str(bed.health.get("state", "?"))
        if bed.health.get("detail"):
            health += f" ({bed.health['detail']})"
    inputs = "-" if last is None else "".join(_MOD_ABBR[m] if m in last.modalities else "." for m in messages.MODALITIES)
    status = bed.status or "?"
    return Row(cells=(f"{bed.site}/{bed.bed}", nips_cell, int_cell, arrow, format_age(age), status,
                      health[:40], inputs),
               stale=stale, offline=status == messages.STATUS_OFFLINE,
               nips=None if stale or last is None else last.nips)


def render_table(beds: Iterable[BedState], *, now: datetime, stale_after_s: float = 30.0,
                 trend_window_s: float = 300.0, color: bool = False, title: str | None = None) -> str:
    """The whole screen as text: a header line, the column titles and one row per bed.

    Pure: same beds and ``now`` give the same text. ``color`` adds ANSI colours (red: offline or NIPS >= 4,
    i.e. moderate-to-severe pain on the NIPS; yellow: stale) after padding, so alignment is unaffected.
    """
    rows = [bed_row(b, now, stale_after_s=stale_after_s, trend_window_s=trend_window_s) for b in beds]
    widths = [max([len(c)] + [len(r.cells[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    stamp = now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    head = title or "neopain watch"
    lines = [f"{head}  {stamp}  beds: {len(rows)}  stale after {stale_after_s:g}s  "
             f"inputs: V video A audio H vitals", "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    for r in rows:
        line = "  ".join(c.ljust(w) for c, w in zip(r.cells, widths)).rstrip()
        if color:
            if r.offline or (r.nips is not None and r.nips >= 4):
                line = _RED + line + _RESET
            elif r.stale:
                line = _YELLOW + line + _RESET
        lines.append(line)
    if not rows:
        lines.append("(no beds seen yet)")
    return "\n".join(lines) + "\n"
