"""What the board and the bed page show of one bed, as plain data: the same dict is rendered into the page's
HTML by the templates and sent to the open pages as JSON, so the first paint and the live updates agree.

Safety rules (those of ``neopain watch``, ``appliance.station.board``): the age of a score is the larger of
the device's and the station's view of it; a score older than the stale limit is shown as *stale* with its
age and no number, colour or trend; a bed that never scored shows no number either.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from appliance.mqtt import messages
from appliance.station.board import TREND_NONE, BedState, health_view, is_stale, score_age_s, trend
from appliance.station.table import format_age
from appliance.station.web.bands import band_of
from appliance.station.web.history import ScoreRow

#: What a device reports of itself (health ``state``); a bed page or tile adds ``offline`` and ``unknown``.
HEALTH_STATES = ("ok", "degraded", "no_score")


@dataclass(frozen=True)
class PatientView:
    """The patient in a bed (from ``appliance.station.patients``): name as on the name band, and the MRN."""

    name: str
    mrn: str


def bed_key(site: str, bed: str) -> str:
    return f"{site}/{bed}"


def bed_href(site: str, bed: str) -> str:
    return f"/bed/{quote(site, safe='')}/{quote(bed, safe='')}"


def bed_view(state: BedState, latest: ScoreRow | None, now: datetime, *, stale_after_s: float,
             patient: PatientView | None = None, trend_window_s: float = 300.0) -> dict[str, Any]:
    """One bed as the pages show it. ``latest``: the stored row of the bed's newest score (calibration, items,
    creation time), None when not known."""
    last = state.last
    stale = is_stale(last, now, stale_after_s)
    age = None if last is None else score_age_s(last, now)
    view: dict[str, Any] = {
        "key": bed_key(state.site, state.bed), "site": state.site, "bed": state.bed,
        "href": bed_href(state.site, state.bed),
        "never": last is None, "stale": stale, "age_s": None if age is None else round(age, 1),
        "age": format_age(age) if age is not None else "never scored",
        "nips": None, "intensity": None, "band": "none" if last is None else "stale", "band_label": "",
        "band_meaning": "no score yet" if last is None else "stale: no current score",
        "trend": TREND_NONE,
        "status": state.status or "unknown",
        "health": "unknown", "health_detail": "", "health_alarm": True, "health_changes": 0,
        "modalities": [], "calibration": None, "created_ms": None,
        "patient": None if patient is None else {"name": patient.name, "mrn": patient.mrn},
    }
    if state.health:
        # Grouped as watch groups it (board.health_view): an alarm only once a state other than ok has lasted,
        # and a modality that comes and goes is a count of changes, not an alarm each time.
        grouped = health_view(state, now)
        view["health"] = grouped.state if grouped.state in HEALTH_STATES else "unknown"
        view["health_detail"] = grouped.detail or ""
        view["health_alarm"] = grouped.alarm or view["health"] == "unknown"
        view["health_changes"] = grouped.changes
    if state.status == messages.STATUS_OFFLINE:  # its retained health is from before it went away
        before = view["health"] + (f": {view['health_detail']}" if view["health_detail"] else "")
        view["health"], view["health_detail"] = "offline", f"last health before going offline: {before}"
        view["health_alarm"] = True
    if last is not None:
        view["modalities"] = [m for m in messages.MODALITIES if m in last.modalities]
    if latest is not None and last is not None and latest.message_id == last.message_id:
        view["calibration"] = latest.calibration
        view["created_ms"] = None if latest.created is None else int(latest.created * 1000)
    if last is not None and not stale:
        band = band_of(last.nips)
        view.update(nips=f"{last.nips:.1f}", intensity=f"{last.intensity:.1f}", band=band.key,
                    band_label=band.label, band_meaning=band.meaning,
                    trend=trend(list(state.scores), now, window_s=trend_window_s))
    return view
