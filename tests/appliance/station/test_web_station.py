"""``neopain station`` in a real browser: Debian's Chromium driven by selenium, a real mosquitto, the station as
a subprocess (``neopain station run``, its user made with ``neopain station user add`` reading the password
from stdin), and two simulated beds publishing through the device's own ``Publisher`` (outbox, sequence,
commands). Bed 1's device runs the device-side command path of the daemon: ``Publisher(on_command=...)`` with
the station key, into ``CalibrationRecorder`` and a real ``SessionStore``.

One broker, one station, one browser and one pair of devices for the whole module (module-scoped fixtures),
so the five checks together cost one start-up of each.
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from appliance import clock
from appliance.devtools import browser as chrome
from appliance.devtools.station_rig import add_user, items_for, sign_in, start_station
from appliance.mqtt.publisher import Publisher, PublisherConfig
from appliance.scoring.ratings import CalibrationRecorder, SessionStore
from tests.appliance.mqtt.broker import Broker, free_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(chrome.missing() is not None,
                                                    reason=f"no browser: {chrome.missing()}")]

SITE = "nicu"
USER, PASSWORD = "nurse.kim", "correct horse battery"
KEY = bytes(range(32))
STALE_AFTER_S = 6.0  # short, so a bed going stale is seen within the test's budget
HISTORY_POINTS = 45  # bed 1's backdated scores, one every 30 s
LIVE_NIPS = 5.6  # bed 1's current score (severe), published every second
BED2_NIPS = 3.2  # bed 2's one fresh score (moderate)
SVG = "{http://www.w3.org/2000/svg}"


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def score(pub: Publisher, nips: float, *, ago_s: float = 0.0, calibration: str = "site-cal-3") -> dict[str, Any]:
    """One score as the daemon publishes it: window on the monotonic clock, UTC mapped by the builder."""
    end = clock.now_ns() - int(ago_s * 1e9)
    return pub.publish_score(
        window_start_ns=end - 2_000_000_000, window_end_ns=end, nips=nips, confidence=0.75,
        modalities={"video": {"used": True, "weight": 0.5}, "audio": {"used": True, "weight": 0.3},
                    "vitals": {"used": True, "weight": 0.2}},
        model_version="fusion-test", calibration_version=calibration, latency_ms={"total": 40.0},
        nips_items=items_for(nips))


class Beds:
    """The two simulated beds; bed 1 keeps publishing LIVE_NIPS every second until stopped."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.store = SessionStore(workdir / "sessions.sqlite3")
        self.store.start("I07", at=time.time() - 3600, started_by="test")
        self.recorder = CalibrationRecorder(self.store).start()
        self.pubs = {bed: Publisher(PublisherConfig(host="127.0.0.1", port=port, site=SITE, bed=bed,
                                                    device_id=f"dev-{bed}", outbox_path=workdir / f"{bed}.outbox",
                                                    command_key=KEY),
                                    on_command=self.recorder.on_command if bed == "bed-1" else None)
                     for bed in ("bed-1", "bed-2")}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._live, daemon=True)

    def start(self) -> None:
        for pub in self.pubs.values():
            pub.start()
        for k in range(HISTORY_POINTS):  # a sawtooth 1..4.5 over the last 22 minutes
            ago = (HISTORY_POINTS - k) * 30.0
            score(self.pubs["bed-1"], 1.0 + (k % 8) * 0.5, ago_s=ago,
                  calibration="uncalibrated" if k < 20 else "site-cal-3")
        score(self.pubs["bed-2"], 1.0, ago_s=10.0)
        self._thread.start()

    def _live(self) -> None:
        while not self._stop.wait(1.0):
            score(self.pubs["bed-1"], LIVE_NIPS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for pub in self.pubs.values():
            pub.stop()
        self.recorder.stop()
        self.store.close()

    def ratings(self) -> list[tuple[Any, ...]]:
        """The device store's ratings, read as a separate reader of its file (what `calibrate fit` reads)."""
        self.recorder.flush()
        with sqlite3.connect(self.store.path) as db:
            return db.execute("SELECT nips, rater, source FROM ratings ORDER BY id").fetchall()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("web")
    broker = Broker(workdir=work, port=free_port(), extra=[])
    broker.start()
    key_file = work / "station.key"
    key_file.write_text(KEY.hex() + "\n")
    key_file.chmod(0o600)
    add_user(work / "state", USER, PASSWORD)  # `neopain station user add`, the password on stdin
    http = free_port()
    station = start_station(work, broker.port, http, "--stale-after", str(STALE_AFTER_S), "--command-key-file",
                            str(key_file), "--station-id", "web-test")
    beds = Beds(work, broker.port)
    beds.start()
    driver = chrome.start_browser(work / "profile")
    driver.implicitly_wait(0)
    try:
        yield {"url": f"http://127.0.0.1:{http}", "driver": driver, "beds": beds, "work": work}
    finally:
        driver.quit()
        station.terminate()
        station.wait(20)
        beds.stop()
        broker.kill()


@pytest.fixture(scope="module")
def board(rig: dict[str, Any]) -> dict[str, Any]:
    """Signed in, on the board (opened once: the checks below see it change live, without reloads)."""
    sign_in(rig["driver"], rig["url"], USER, PASSWORD)
    return rig


_TILE_JS = """
const el = document.querySelector('.tile[data-bed="' + arguments[0] + '"]');
return el && {nips: el.querySelector('[data-f="nips"]').textContent.trim(), cls: el.className,
              stale: el.dataset.stale, text: el.innerText};
"""
_CHART_JS = "const svg = document.querySelector('#chart svg.trend'); return svg && svg.outerHTML;"


def tile(rig: dict[str, Any], bed: str) -> dict[str, str] | None:
    """One tile as the page shows it, read in one script (the page's own clock may change it between reads)."""
    return rig["driver"].execute_script(_TILE_JS, f"{SITE}/{bed}")


def chart(rig: dict[str, Any]) -> ET.Element:
    """The bed page's chart, read in one script (the page redraws it while scores arrive)."""
    svg = wait_until(lambda: rig["driver"].execute_script(_CHART_JS), 10, "the chart")
    return ET.fromstring(svg)


def test_wrong_password_is_refused(rig: dict[str, Any]) -> None:
    d = rig["driver"]
    d.delete_all_cookies()
    with pytest.raises(RuntimeError, match="sign-in failed: Wrong user name or password"):
        sign_in(d, rig["url"], USER, PASSWORD + "x")
    assert d.current_url.startswith(rig["url"] + "/login")
    assert d.get_cookie("neopain_session") is None
    d.get(rig["url"] + "/")  # still refused: back to the login page
    assert d.current_url.startswith(rig["url"] + "/login?next=")
    sign_in(d, rig["url"], USER, PASSWORD)  # the module's other checks share this browser, signed in


def test_board_shows_both_beds_with_their_current_nips(board: dict[str, Any]) -> None:
    wait_until(lambda: (t := tile(board, "bed-1")) and t["nips"] == f"{LIVE_NIPS:.1f}", 15, "bed 1's current NIPS")
    before = tile(board, "bed-2")
    assert before is not None and before["nips"] != f"{BED2_NIPS:.1f}"
    score(board["beds"].pubs["bed-2"], BED2_NIPS)  # arrives while the page is open: a live update
    t2 = wait_until(lambda: (t := tile(board, "bed-2")) and t["nips"] == f"{BED2_NIPS:.1f}" and t, 10,
                    "bed 2's new NIPS on the open board")
    t1 = tile(board, "bed-1")
    assert "band-moderate" in t2["cls"] and "NIPS 3-4: moderate pain" in t2["text"]
    assert t1 is not None and "band-severe" in t1["cls"] and "NIPS > 4: severe pain" in t1["text"]
    assert "site-cal-3" in t1["text"] and "device: ok" in t1["text"]
    stats = board["driver"].execute_script("return window.neopainStation")
    assert stats["connected"] and stats["scores"] >= 1 and all(0 <= ms < 10_000 for ms in stats["latencies"])


def test_bed_page_shows_a_trend_with_the_scores(board: dict[str, Any]) -> None:
    d = board["driver"]
    d.get(board["url"] + f"/bed/{SITE}/bed-1?hours=1")
    svg = chart(board)
    points = sum(len(line.get("points", "").split()) for line in svg.iter(f"{SVG}polyline")
                 if line.get("class") == "nips-line")
    assert points >= HISTORY_POINTS and int(svg.get("data-points", "0")) == points
    assert any(p.get("class") == "confidence" for p in svg.iter(f"{SVG}polygon"))
    calibrations = [line for line in svg.iter(f"{SVG}line") if line.get("class") == "calibration"]
    assert len(calibrations) == 1  # uncalibrated -> site-cal-3
    assert "Cry" in [t.text for t in svg.iter(f"{SVG}text")]
    assert tile(board, "bed-1") is not None and "big" in tile(board, "bed-1")["cls"]


def test_a_rating_entered_on_the_page_reaches_the_device(board: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    d = board["driver"]
    d.get(board["url"] + f"/bed/{SITE}/bed-1?hours=1")
    chosen = {"facial_expression": 1, "cry": 2, "breathing": 1, "arms": 0, "legs": 1, "state_of_arousal": 0}
    for name, value in chosen.items():
        d.find_element(By.CSS_SELECTOR, f'input[name="{name}"][value="{value}"]').click()
    total = sum(chosen.values())
    assert d.find_element(By.ID, "rate-total").text == str(total)
    assert board["beds"].ratings() == []
    d.find_element(By.ID, "rate-send").click()
    wait_until(lambda: d.find_elements(By.ID, "rate-notice"), 10, "the page to confirm the rating was sent")
    rows = wait_until(board["beds"].ratings, 10, "the rating in the device's session store")
    assert rows == [(total, USER, "mqtt")]
    marks = [g for g in chart(board).iter(f"{SVG}g") if g.get("class") == "rating"]
    assert [(m.get("data-nips"), m.get("data-rater")) for m in marks] == [(str(total), USER)]
    assert re.search(rf"\b{total}\b.*{re.escape(USER)}", d.find_element(By.ID, "ratings").text)


def test_a_bed_that_stops_publishing_turns_stale(board: dict[str, Any]) -> None:
    d = board["driver"]
    d.get(board["url"] + "/")
    # Bed 2's last score (the previous test) ages past the limit while the page is open: the page's own clock
    # turns it stale in place; bed 1 keeps publishing and stays current.
    t2 = wait_until(lambda: (t := tile(board, "bed-2")) and t["stale"] == "true" and t, STALE_AFTER_S + 10,
                    "bed 2 to turn stale")
    assert t2["nips"] == "STALE" and f"{BED2_NIPS:.1f}" not in t2["text"] and "band-stale" in t2["cls"]
    assert "last score" in t2["text"]
    t1 = tile(board, "bed-1")
    assert t1 is not None and t1["nips"] == f"{LIVE_NIPS:.1f}" and t1["stale"] == "false"
    d.refresh()  # and the station's own rendering agrees
    t2 = wait_until(lambda: tile(board, "bed-2"), 5, "bed 2 after a reload")
    assert t2["nips"] == "STALE" and "band-stale" in t2["cls"]
