"""The station's table as text: a pure function from bed states (``appliance.station.board``) and a given
``now`` to the screen, with no clock and no terminal, so every cell can be tested exactly.

Safety rule of the table: a score older than ``stale_after_s`` (by ``board.score_age_s``, which takes the
larger of the device's and the station's view of its age) is displayed as *stale* with its age, never as a
current value, and no trend arrow is drawn from stale data.

Two layouts: ``wide`` (every column, health cut at 40 characters) and ``narrow`` (fits ``width``, 80 columns by
default: the 0-10 and STATUS columns folded away -- intensity is NIPS x 10/7, an offline bed says so in HEALTH --
and health cut to what is left); ``auto`` takes the wide one when it fits. Health is grouped
(``board.health_view``): a state that is not ok is written in CAPITALS (and red) only once it has lasted
``board.HEALTH_ALARM_AFTER_S``; changes within ``board.HEALTH_CHANGES_WINDOW_S`` are counted (``4x/10m``) rather
than each shown as an alarm. ``health="full"`` adds each bed's whole health text on its own line(s), wrapped to
the width.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from appliance.mqtt import messages
from appliance.station.board import (HEALTH_ALARM_AFTER_S, HEALTH_CHANGES_WINDOW_S, STALE_AFTER_S, TREND_NONE,
                                     BedState, HealthView, health_view, is_stale, score_age_s, trend)

_MOD_ABBR = {"video": "V", "audio": "A", "vitals": "H"}  # H: heart (vitals), V video, A audio
_RED, _YELLOW, _RESET = "\x1b[31m", "\x1b[33m", "\x1b[0m"
COLUMNS = ("BED", "NIPS", "0-10", "TREND", "AGE", "STATUS", "HEALTH", "INPUTS")
NARROW_COLUMNS = ("BED", "NIPS", "T", "AGE", "IN", "HEALTH")
NARROW_WIDTH = 80  # a terminal's classic width: what the narrow layout fits by default
LAYOUTS = ("auto", "wide", "narrow")
HEALTH_MODES = ("short", "full")
_WIDE_HEALTH = 40  # characters of health in the wide layout (the whole text: health="full")
_BED_MAX = 16  # the narrow layout's BED column at most (longer names are cut with "…")


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


def cut_text(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, ending in "…" when something was cut."""
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:width - 1] + "…"


def health_text(view: HealthView) -> str:
    """The short health of a bed: ``state`` (CAPITALS when it alarms), the change count when it came and went
    (``3x/10m``), then the detail in parentheses."""
    if view.state == "?":
        return "?"
    text = view.state.upper() if view.alarm else view.state
    if view.changes >= 2:
        text += f" {view.changes}x/{HEALTH_CHANGES_WINDOW_S / 60:g}m"
    return text + (f" ({view.detail})" if view.detail else "")


@dataclass(frozen=True)
class Row:
    """One table row as text cells plus what it means (for colouring and for tests)."""

    cells: tuple[str, ...]
    stale: bool
    offline: bool
    nips: float | None
    alarm: bool = False  # health not ok for at least board.HEALTH_ALARM_AFTER_S
    health: str = ""  # the whole health text (health="full")


def bed_row(bed: BedState, now: datetime, *, stale_after_s: float, trend_window_s: float) -> Row:
    """The cells of one bed. A stale (or never received) score shows no value and no trend."""
    last = bed.last
    age = None if last is None else score_age_s(last, now)
    stale = is_stale(last, now, stale_after_s)
    if last is None:
        nips_cell, int_cell, arrow = "-", "-", TREND_NONE
    elif stale:
        nips_cell, int_cell, arrow = "stale", "-", TREND_NONE
    else:
        nips_cell, int_cell = f"{last.nips:.1f}", f"{last.intensity:.1f}"
        arrow = trend(list(bed.scores), now, window_s=trend_window_s)
    view = health_view(bed, now)
    health = health_text(view)
    inputs = "-" if last is None else "".join(_MOD_ABBR[m] if m in last.modalities else "." for m in messages.MODALITIES)
    status = bed.status or "?"
    return Row(cells=(f"{bed.site}/{bed.bed}", nips_cell, int_cell, arrow, format_age(age), status,
                      cut_text(health, _WIDE_HEALTH), inputs),
               stale=stale, offline=status == messages.STATUS_OFFLINE,
               nips=None if stale or last is None else last.nips, alarm=view.alarm, health=health)


def _narrow_cells(row: Row) -> tuple[str, ...]:
    bed, nips, _, arrow, age, _, _, inputs = row.cells
    health = f"OFFLINE; {row.health}" if row.offline else row.health
    return (bed, nips, arrow.strip() or " ", age, inputs, health)


def _lines(header: tuple[str, ...], cells: list[tuple[str, ...]], widths: list[int]) -> list[str]:
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *cells]]


def _full_health(row: Row, width: int | None) -> list[str]:
    text = f"health: {row.health}"
    if width is None:
        return ["    " + text]
    return textwrap.wrap(text, width=width, initial_indent="    ", subsequent_indent="      ",
                         break_long_words=True, break_on_hyphens=False) or ["    health:"]


def render_table(beds: Iterable[BedState], *, now: datetime, stale_after_s: float = STALE_AFTER_S,
                 trend_window_s: float = 300.0, color: bool = False, title: str | None = None,
                 layout: str = "wide", width: int | None = None, health: str = "short") -> str:
    """The whole screen as text: a header line, the column titles and one row per bed.

    Pure: same beds and ``now`` give the same text. ``color`` adds ANSI colours (red: offline, NIPS >= 4, i.e.
    moderate-to-severe pain on the NIPS, or a health alarm; yellow: stale) after padding, so alignment is
    unaffected. ``layout``/``width``/``health``: see the module doc; in the narrow layout (and ``auto``) no line
    is longer than ``width`` (default ``NARROW_WIDTH``) characters, colour codes aside.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if health not in HEALTH_MODES:
        raise ValueError(f"health: expected one of {', '.join(HEALTH_MODES)}, got {health!r}")
    rows = [bed_row(b, now, stale_after_s=stale_after_s, trend_window_s=trend_window_s) for b in beds]
    stamp = now.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    head = title or "neopain watch"
    widths = [max([len(c)] + [len(r.cells[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
    lines = [f"{head}  {stamp}  beds: {len(rows)}  stale after {stale_after_s:g}s  "
             f"inputs: V video A audio H vitals", *_lines(COLUMNS, [r.cells for r in rows], widths)]
    limit = width or NARROW_WIDTH
    if layout == "narrow" or (layout == "auto" and max(len(x) for x in lines) > limit):
        lines, layout = _narrow(rows, head, stamp, stale_after_s, limit), "narrow"
    else:
        limit = width if layout == "auto" else None  # wide on request: the full lines, however long
    out = lines[:2] if layout == "wide" else lines[:3]
    for r, line in zip(rows, lines[len(out):]):
        if color:
            if r.offline or r.alarm or (r.nips is not None and r.nips >= 4):
                line = _RED + line + _RESET
            elif r.stale:
                line = _YELLOW + line + _RESET
        out.append(line)
        if health == "full":
            out += _full_health(r, limit)
    if not rows:
        out.append("(no beds seen yet)")
    return "\n".join(out) + "\n"


def _narrow(rows: list[Row], head: str, stamp: str, stale_after_s: float, width: int) -> list[str]:
    """Title, legend, column titles and rows, each cut to ``width``: BED at most ``_BED_MAX``, HEALTH the rest."""
    cells = [_narrow_cells(r) for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(NARROW_COLUMNS)]
    widths[0] = min(widths[0], _BED_MAX)
    widths[-1] = max(len(NARROW_COLUMNS[-1]), width - sum(widths[:-1]) - 2 * (len(widths) - 1))
    cells = [(cut_text(r[0], widths[0]), *r[1:-1], cut_text(r[-1], widths[-1])) for r in cells]
    title = f"{head}  {stamp[11:]}  beds: {len(rows)}  stale after {stale_after_s:g}s"
    legend = (f"IN: V video A audio H vitals; HEALTH in CAPS: not ok for {HEALTH_ALARM_AFTER_S:g}s+, "
              f"Nx/{HEALTH_CHANGES_WINDOW_S / 60:g}m: changes")
    return [cut_text(x, width) for x in (title, legend, *_lines(NARROW_COLUMNS, cells, widths))]
