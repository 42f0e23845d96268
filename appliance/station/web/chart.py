"""The bed page's trend chart, drawn on the station as SVG: NIPS with its confidence band over the NIPS bands,
the six NIPS items, the device's health and the calibration in force, all on one time axis, with the nurses'
ratings on top.

Why server-side SVG and not a JavaScript chart library: nothing to download or vendor and keep patched, the
chart is the same in every browser and in the screenshots, it needs no script (a locked-down browser still
shows it), and 24 h of scores are reduced to at most ``MAX_BUCKETS`` slices in SQLite before drawing, so a
chart of 43,200 scores is a few kilobytes.

The confidence band: a score carries one ``confidence`` in [0, 1] (``appliance/scoring/pipeline.py``: model
certainty x modality coverage), not an interval. The band drawn is nips +/- (1 - confidence) x 3.5, clipped to
0-7: at confidence 1 it is the line itself, at 0 it spans the whole scale (the score says nothing). It shows
how far to trust the line, not a statistical interval.

Gaps: two slices further apart than the stale limit (or two slice widths) are not joined, so an outage never
looks like a steady score.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape
from typing import Iterable, Sequence

from appliance.station.web.bands import NIPS_BANDS, band_ceiling, band_floor
from appliance.station.web.history import ITEM_NAMES, Bucket, Event, Rating
from appliance.station.web.nips_items import label
from models.vocabulary import NIPS_ITEM_MAXIMA, NIPS_MAX

#: The chart ranges offered on the bed page (hours).
RANGES_H: tuple[int, ...] = (1, 4, 12, 24)
#: Most time slices one chart draws (one per ~2 px of plot width).
MAX_BUCKETS = 480

WIDTH = 1200
LEFT, RIGHT = 118, 24
TOP = 34
MAIN_H = 270
ITEM_ROW_H = 18
GAP = 16
LANE_H = 22
AXIS_H = 62  # the time labels, then the device lane's legend
FONT = 15

LINE = "#0d47a1"
BAND_FILL = "#1e88e5"
RATING = "#111111"
CALIBRATION = "#6a1b9a"
ITEM_INK = "#4a148c"
HEALTH_COLORS = {"ok": "#2e7d32", "degraded": "#f9a825", "no_score": "#c62828", "offline": "#424242",
                 "unknown": "#e0e0e0"}
HEALTH_WORDS = {"ok": "ok", "degraded": "degraded", "no_score": "no score", "offline": "offline",
                "unknown": "unknown"}
_TICKS_MIN = (5, 10, 15, 30, 60, 120, 180, 360)


@dataclass(frozen=True)
class Frame:
    """The time range of a chart and how it maps onto the drawing."""

    since: float
    until: float

    @property
    def plot_w(self) -> float:
        return WIDTH - LEFT - RIGHT

    def x(self, t: float) -> float:
        return LEFT + (min(max(t, self.since), self.until) - self.since) / (self.until - self.since) * self.plot_w


def _y(nips: float) -> float:
    return TOP + MAIN_H - min(max(nips, 0.0), NIPS_MAX) / NIPS_MAX * MAIN_H


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def half_width(confidence: float) -> float:
    """Half the confidence band in NIPS points (see the module docstring)."""
    return (1.0 - min(max(confidence, 0.0), 1.0)) * NIPS_MAX / 2


def segments(buckets: Sequence[Bucket], max_gap_s: float) -> list[list[Bucket]]:
    """Runs of slices close enough in time to be joined by a line."""
    runs: list[list[Bucket]] = []
    for b in buckets:
        if runs and (b.t0 + b.t1) / 2 - (runs[-1][-1].t0 + runs[-1][-1].t1) / 2 <= max_gap_s:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs


def health_spans(events: Iterable[Event], since: float, until: float) -> list[tuple[float, float, str, str]]:
    """``(start, end, state, detail)`` of the device's state over the range; offline wins over health."""
    spans: list[tuple[float, float, str, str]] = []
    health, detail, status = "unknown", "", "unknown"
    start = since
    for e in sorted((e for e in events if e.kind in ("health", "status")), key=lambda e: e.t):
        before = _state(health, status)
        if e.kind == "health":
            health, new_detail = e.value, e.detail or ""
        else:
            status, new_detail = e.value, detail
        t = max(e.t, since)
        if (_state(health, status), new_detail) != (before, detail) and t > start:
            spans.append((start, t, before, detail))
            start = t
        detail = new_detail
    spans.append((start, until, _state(health, status), detail))
    return [s for s in spans if s[1] > s[0]]


def _state(health: str, status: str) -> str:
    if status == "offline":
        return "offline"
    return health if health in HEALTH_COLORS else "unknown"


def render(buckets: Sequence[Bucket], events: Sequence[Event], ratings: Sequence[Rating], *, since: float,
           until: float, max_gap_s: float, title: str = "") -> str:
    """The whole chart as an SVG document (times on the axis in the station's local time)."""
    f = Frame(since, until)
    items_top = TOP + MAIN_H + GAP
    lane_top = items_top + len(ITEM_NAMES) * ITEM_ROW_H + GAP
    axis_top = lane_top + LANE_H
    height = axis_top + AXIS_H
    drawn = sum(1 for _ in buckets)
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'class="trend" data-points="{drawn}" data-ratings="{len(ratings)}" font-family="sans-serif" '
        f'font-size="{FONT}">',
        f"<title>{escape(title or 'NIPS trend')}</title>",
    ]
    # NIPS bands behind the plot, with their names.
    for band in NIPS_BANDS:
        y0, y1 = _y(band_ceiling(band)), _y(band_floor(band))
        out.append(f'<rect x="{LEFT}" y="{_fmt(y0)}" width="{_fmt(f.plot_w)}" height="{_fmt(y1 - y0)}" '
                   f'fill="{band.tint}"/>')
        out.append(f'<text x="{LEFT + 6}" y="{_fmt(y0 + 17)}" fill="#555" font-size="{FONT - 2}">'
                   f'NIPS {escape(band.label)}: {escape(band.meaning)}</text>')
    for v in range(NIPS_MAX + 1):
        out.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{_fmt(_y(v))}" y2="{_fmt(_y(v))}" stroke="#ccc" '
                   f'stroke-width="0.6"/>')
        out.append(f'<text x="{LEFT - 8}" y="{_fmt(_y(v) + 5)}" text-anchor="end">{v}</text>')
    out.append(f'<text x="{LEFT - 44}" y="{TOP + MAIN_H / 2}" text-anchor="middle" font-weight="bold" '
               f'transform="rotate(-90 {LEFT - 44} {TOP + MAIN_H / 2})">NIPS</text>')
    out += _time_grid(f, TOP, axis_top)
    # Confidence band and the NIPS line, one run at a time.
    gap = max(max_gap_s, 2 * (until - since) / MAX_BUCKETS)
    for run in segments(buckets, gap):
        mids = [(b.t0 + b.t1) / 2 for b in run]
        with_conf = [(t, b) for t, b in zip(mids, run) if b.confidence is not None]
        if with_conf:
            upper = [(f.x(t), _y(b.nips + half_width(b.confidence or 0.0))) for t, b in with_conf]
            lower = [(f.x(t), _y(b.nips - half_width(b.confidence or 0.0))) for t, b in reversed(with_conf)]
            if len(upper) == 1:  # one slice: a small box so it shows
                (x, yu), (_, yl) = upper[0], lower[0]
                upper, lower = [(x - 3, yu), (x + 3, yu)], [(x + 3, yl), (x - 3, yl)]
            pts = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in upper + lower)
            out.append(f'<polygon class="confidence" points="{pts}" fill="{BAND_FILL}" fill-opacity="0.22"/>')
        pts = " ".join(f"{_fmt(f.x(t))},{_fmt(_y(b.nips))}" for t, b in zip(mids, run))
        out.append(f'<polyline class="nips-line" points="{pts}" fill="none" stroke="{LINE}" stroke-width="2.5" '
                   f'stroke-linejoin="round"/>')
        if len(run) == 1 or drawn <= 60:
            out += [f'<circle cx="{_fmt(f.x(t))}" cy="{_fmt(_y(b.nips))}" r="3.5" fill="{LINE}"/>'
                    for t, b in zip(mids, run)]
    out += _items(f, buckets, items_top)
    out += _health(f, events, lane_top)
    out += _health_legend(axis_top + AXIS_H - 8)
    out += _calibrations(f, events, lane_top + LANE_H)
    out += _ratings(f, ratings)
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{_fmt(f.plot_w)}" height="{MAIN_H}" fill="none" stroke="#888"/>')
    if not drawn:
        out.append(f'<text x="{LEFT + f.plot_w / 2}" y="{TOP + MAIN_H / 2}" text-anchor="middle" font-size="20" '
                   f'fill="#333">no scores in this range</text>')
    out.append("</svg>")
    return "\n".join(out)


def _local(t: float) -> datetime:
    return datetime.fromtimestamp(t).astimezone()


def _time_grid(f: Frame, top: float, bottom: float) -> list[str]:
    span_min = (f.until - f.since) / 60
    step = next((s for s in _TICKS_MIN if span_min / s <= 8), _TICKS_MIN[-1])
    first = _local(f.since).replace(second=0, microsecond=0)
    first += timedelta(minutes=(-first.minute) % step if step < 60 else 0)
    if step >= 60:
        first = first.replace(minute=0) + timedelta(hours=1)
        while first.hour % (step // 60):
            first += timedelta(hours=1)
    out = []
    t = first
    while t.timestamp() <= f.until:
        if t.timestamp() >= f.since:
            x = f.x(t.timestamp())
            out.append(f'<line x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{top}" y2="{bottom}" stroke="#bbb" '
                       f'stroke-width="0.6" stroke-dasharray="2,3"/>')
            out.append(f'<text x="{_fmt(x)}" y="{bottom + 22}" text-anchor="middle">{t:%H:%M}</text>')
        t += timedelta(minutes=step)
    zone = _local(f.until).tzname() or "local"
    out.append(f'<text x="{WIDTH - RIGHT}" y="{top - 10}" text-anchor="end" fill="#333">now {_local(f.until):%H:%M} '
               f'({escape(zone)})</text>')
    return out


def _items(f: Frame, buckets: Sequence[Bucket], top: float) -> list[str]:
    out = []
    for i, name in enumerate(ITEM_NAMES):
        y = top + i * ITEM_ROW_H
        out.append(f'<rect x="{LEFT}" y="{y}" width="{_fmt(f.plot_w)}" height="{ITEM_ROW_H - 2}" fill="#f5f5f5"/>')
        out.append(f'<text x="{LEFT - 8}" y="{y + ITEM_ROW_H - 5}" text-anchor="end" font-size="{FONT - 1}">'
                   f'{escape(label(name))}</text>')
        top_value = NIPS_ITEM_MAXIMA[name]
        for b in buckets:
            if b.items is None:
                continue
            level = min(max(b.items.get(name, 0.0) / top_value, 0.0), 1.0)
            if level < 0.05:
                continue
            x0, x1 = f.x(b.t0), f.x(b.t1)
            out.append(f'<rect x="{_fmt(x0)}" y="{y}" width="{_fmt(max(x1 - x0, 1.5))}" height="{ITEM_ROW_H - 2}" '
                       f'fill="{ITEM_INK}" fill-opacity="{level:.2f}"/>')
    out.append(f'<text x="{12}" y="{top + 3 * ITEM_ROW_H}" font-size="{FONT - 2}" fill="#555" '
               f'transform="rotate(-90 12 {top + 3 * ITEM_ROW_H})" text-anchor="middle">items</text>')
    return out


def _health(f: Frame, events: Sequence[Event], top: float) -> list[str]:
    out = [f'<text x="{LEFT - 8}" y="{top + LANE_H - 6}" text-anchor="end" font-size="{FONT - 1}">Device</text>']
    for start, end, state, detail in health_spans(events, f.since, f.until):
        x0, x1 = f.x(start), f.x(end)
        tip = HEALTH_WORDS[state] + (f": {detail}" if detail else "")
        out.append(f'<rect class="health health-{state}" x="{_fmt(x0)}" y="{top}" width="{_fmt(max(x1 - x0, 1))}" '
                   f'height="{LANE_H - 4}" fill="{HEALTH_COLORS[state]}"><title>{escape(tip)}</title></rect>')
        if x1 - x0 > 90 and state != "ok":
            ink = "#fff" if state in ("offline", "no_score") else "#000"
            out.append(f'<text x="{_fmt(x0 + 5)}" y="{top + LANE_H - 9}" font-size="{FONT - 3}" fill="{ink}">'
                       f'{escape(HEALTH_WORDS[state])}</text>')
    return out


def _health_legend(y: float) -> list[str]:
    out = [f'<text x="{LEFT}" y="{y}" font-size="{FONT - 1}">Device:</text>']
    x = LEFT + 64
    for state in ("ok", "degraded", "no_score", "offline", "unknown"):
        out.append(f'<rect x="{x}" y="{y - 12}" width="22" height="14" fill="{HEALTH_COLORS[state]}" stroke="#999" '
                   f'stroke-width="0.5"/>')
        out.append(f'<text x="{x + 28}" y="{y}" font-size="{FONT - 1}">{HEALTH_WORDS[state]}</text>')
        x += 42 + 8.5 * len(HEALTH_WORDS[state])
    return out


def _calibrations(f: Frame, events: Sequence[Event], bottom: float) -> list[str]:
    out = []
    for e in events:
        if e.kind != "calibration" or not f.since <= e.t <= f.until:
            continue
        x = f.x(e.t)
        out.append(f'<line class="calibration" x1="{_fmt(x)}" x2="{_fmt(x)}" y1="{TOP}" y2="{bottom}" '
                   f'stroke="{CALIBRATION}" stroke-width="2" stroke-dasharray="6,4"/>')
        out.append(f'<text x="{_fmt(x + 4)}" y="{TOP + MAIN_H - 8}" fill="{CALIBRATION}" font-size="{FONT - 1}">'
                   f'calibration {escape(e.value)}</text>')
    return out


def _ratings(f: Frame, ratings: Sequence[Rating]) -> list[str]:
    out = []
    for r in ratings:
        x, y = f.x(r.t), _y(r.nips)
        when = _local(r.t).strftime("%H:%M")
        tip = f"nurse rating NIPS {r.nips} by {r.rater} at {when}"
        out.append(f'<g class="rating" data-rater="{escape(r.rater)}" data-nips="{r.nips}"><title>{escape(tip)}</title>'
                   f'<path d="M{_fmt(x)},{_fmt(y - 9)} l9,9 l-9,9 l-9,-9 z" fill="{RATING}" stroke="#fff" '
                   f'stroke-width="2"/>'
                   f'<text x="{_fmt(x)}" y="{_fmt(max(y - 14, TOP + 14))}" text-anchor="{_anchor(x)}" '
                   f'font-weight="bold">'
                   f'{r.nips} ({escape(r.rater)})</text></g>')
    return out


def _anchor(x: float) -> str:
    """Labels near the right edge end at their mark, so they stay inside the chart."""
    return "end" if x > WIDTH - RIGHT - 90 else "start" if x < LEFT + 90 else "middle"
