"""``python -m appliance.devtools.station_shots --out docs/station``: screenshots of the web station's board and of
a bed page, from a real station fed through a real broker.

The ward: eight beds in the states a nurse must tell apart at a glance (severe, moderate, mild, a device
scoring without audio, stale, offline, never scored, uncalibrated), four of them with a patient from the ADT
registry. Bed 1 has three hours of history (a heel-lance episode, audio lost for twenty minutes, the site
calibration installed) and a nurse rating entered through the page itself. The infants and names are made
up; the scores are synthetic, not clinical.
"""
from __future__ import annotations

import argparse
import math
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from appliance.devtools import browser as chrome
from appliance.devtools.station_rig import Bed, SimBeds, ward
from appliance.station.patients import Patient, PatientRegistry, bed_id
from appliance.station.web.commands import utc_text

SITE = "nicu"
PATIENTS = {"bed-01": ("MILLER", "Baby Girl", "100234"), "bed-02": ("OKAFOR", "Baby Boy", "100251"),
            "bed-03": ("NGUYEN", "Twin A", "100262"), "bed-05": ("SCHMIDT", "Baby Boy", "100270")}


#: The beds' current scores when the pictures are taken (bed 5 went quiet, bed 7 never scored).
NOW = {"bed-01": 5.6, "bed-02": 3.4, "bed-03": 1.1, "bed-04": 2.9, "bed-06": 0.8, "bed-08": 6.3}


#: Which behaviours show (item -> 0..1): a heel lance is face and cry; the infant now is unsettled and fussy.
LANCE = {"facial_expression": 1.0, "cry": 1.0, "breathing": 0.7, "arms": 0.4, "legs": 0.5, "state_of_arousal": 0.6}
UNSETTLED = {"facial_expression": 0.6, "cry": 0.3, "breathing": 0.5, "arms": 1.0, "legs": 1.0, "state_of_arousal": 1.0}
CALM = {"facial_expression": 0.4, "cry": 0.1, "breathing": 0.5, "arms": 0.3, "legs": 0.3, "state_of_arousal": 0.2}


def _history_nips(minutes_ago: float) -> float:
    """Bed 1's story: calm, a heel lance 100 min ago, calm again, and rising now."""
    base = 1.2 + 0.4 * math.sin(minutes_ago / 7.0)
    lance = 4.8 * math.exp(-((minutes_ago - 100) / 6.0) ** 2)
    now = 4.2 * math.exp(-(minutes_ago / 5.0) ** 2)
    return round(min(7.0, base + lance + now), 2)


def build_ward(beds: SimBeds) -> None:
    b = {bed.bed: bed for bed in beds.beds}
    now = datetime.now(timezone.utc)
    first = b["bed-01"]
    for k in range(180 * 6, 0, -1):  # every 10 s for 3 h
        minutes = k / 6
        no_audio = 50 <= minutes <= 70
        if minutes == 70:
            beds.health(first, state="degraded", detail="scoring without audio (audio: no cry segment)",
                        sources={"camera": True, "microphone": False, "monitor": True},
                        utc=utc_text(now - timedelta(minutes=70)))
        if minutes == 50:
            beds.health(first, utc=utc_text(now - timedelta(minutes=50)))
        beds.score(first, _history_nips(minutes), ago_s=minutes * 60, confidence=0.55 if no_audio else 0.82,
                   profile=LANCE if 85 < minutes < 115 else UNSETTLED if minutes < 15 else CALM,
                   used=("video", "vitals") if no_audio else ("video", "audio", "vitals"),
                   calibration="uncalibrated" if minutes > 120 else "site-cal-3")
    beds.score(first, NOW["bed-01"], profile=UNSETTLED)
    for bed, kw in (("bed-02", {}), ("bed-03", {}), ("bed-08", {}), ("bed-06", {"calibration": "uncalibrated"})):
        nips = NOW[bed]
        for k in range(30, 0, -1):
            beds.score(b[bed], max(0.0, nips - 0.03 * k), ago_s=k * 10, **kw)
        beds.score(b[bed], nips, **kw)
    beds.health(b["bed-04"], state="degraded", detail="scoring without audio (audio: microphone unplugged)",
                sources={"camera": True, "microphone": False, "monitor": True})
    beds.score(b["bed-04"], NOW["bed-04"], used=("video", "vitals"), confidence=0.6)
    beds.score(b["bed-05"], 4.4, ago_s=240)  # a device that went quiet four minutes ago
    beds.status(b["bed-05"], "offline")
    beds.health(b["bed-07"], state="no_score", detail="every modality missing: no face, no cry, monitor silent",
                sources={"camera": True, "microphone": True, "monitor": False})


def _patients(work: Path) -> list[str]:
    """The ADT registry with four of the beds occupied (what `neopain adt` keeps); the station reads it."""
    registry = PatientRegistry(work / "patients.sqlite3")
    for bed, (family, given, mrn) in PATIENTS.items():
        registry.admit(Patient(mrn=mrn, authority="HOSP", family=family, given=given), bed_id(SITE, bed),
                       datetime.now(timezone.utc) - timedelta(days=2))
    registry.close()
    return ["--patients", str(work / "patients.sqlite3")]


def rate(driver: object, url: str, items: dict[str, int]) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url)  # type: ignore[attr-defined]
    for name, value in items.items():
        driver.find_element(By.CSS_SELECTOR, f'input[name="{name}"][value="{value}"]').click()  # type: ignore
    driver.find_element(By.ID, "rate-send").click()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while not driver.find_elements(By.ID, "rate-notice") and time.monotonic() < deadline:  # type: ignore
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.devtools.station_shots", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/station"), help="where the PNGs go (default docs/station)")
    args = parser.parse_args(argv)
    if (why := chrome.missing()) is not None:
        parser.error(why)
    with ward("--no-confirm", prepare=_patients) as rig:
        rig.beds = beds = SimBeds(rig.port, [Bed(SITE, f"bed-{i:02d}", f"dev-{i:02d}") for i in range(1, 9)], clients=2)
        since = utc_text(datetime.now(timezone.utc) - timedelta(minutes=181))
        beds.start(health=lambda bed: {"utc": since})  # the devices have been up for three hours
        build_ward(beds)
        time.sleep(2)
        bed_url = f"{rig.url}/bed/{SITE}/bed-01?hours=4"
        rate(rig.driver, bed_url, {"facial_expression": 1, "cry": 2, "breathing": 1, "arms": 1, "legs": 1,
                                   "state_of_arousal": 0})
        for bed in beds.beds:  # fresh scores just before the pictures (bed 5 stays quiet, bed 7 never scores)
            if bed.bed in NOW:
                beds.score(bed, NOW[bed.bed], calibration="uncalibrated" if bed.bed == "bed-06" else "site-cal-3",
                           used=("video", "vitals") if bed.bed == "bed-04" else ("video", "audio", "vitals"))
        args.out.mkdir(parents=True, exist_ok=True)
        rig.driver.get(bed_url)
        time.sleep(1.5)
        rig.driver.save_screenshot(str(args.out / "bed.png"))
        rig.driver.get(rig.url + "/")
        time.sleep(1.5)
        rig.driver.save_screenshot(str(args.out / "board.png"))
    print(f"wrote {args.out / 'board.png'} and {args.out / 'bed.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
