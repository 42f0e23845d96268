"""``python -m appliance.devtools.station_bench``: the web station under a ward of simulated beds.

200 beds (``--beds``) each publish a score every ``scoring.cadence_s`` (the daemon's default, 2 s: 100 scores a
second in all), spread evenly over the cadence, into mosquitto for ``--minutes`` (default 5), while a headless
Chromium keeps the board open. Measured:

* the station process's CPU (% of one core) and RSS, sampled every 2 s (psutil);
* score-to-page latency: from the score's ``created_utc`` (the device built it) to the moment the board's
  script receives the live update (``Date.now()`` in the page; the same machine clock), p50 / p99 / max;
* loss: every published score's ``message_id`` must be in the station's history file afterwards.

Not a test: it takes minutes and its numbers depend on the machine and on what else runs on it (the load
average is written beside them). Writes ``station_200_beds.md`` and ``station_200_beds.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from appliance.config import default
from appliance.devtools import browser as chrome
from appliance.devtools.station_rig import SimBeds, ward

SAMPLE_S = 2.0
NOTE = ("RSS grows while the station's in-memory board fills: each bed's recent scores (for the trend arrow) and the\n"
        "message ids it de-duplicates by, both bounded per bed; everything older is only in the history file.")


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Sampler:
    """CPU and RSS of some processes every SAMPLE_S seconds, on a thread."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs = procs
        self.rows: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> "Sampler":
        for p in self.procs.values():
            p.cpu_percent(None)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            row = {"t": time.monotonic() - self._t0}
            for name, p in self.procs.items():
                try:
                    kids = p.children(recursive=True)
                    row[f"{name}_cpu"] = p.cpu_percent(None) + sum(_cpu(k) for k in kids)
                    row[f"{name}_rss"] = (p.memory_info().rss + sum(_rss(k) for k in kids)) / 2**20
                except psutil.Error:
                    continue
            self.rows.append(row)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


_seen: dict[int, psutil.Process] = {}


def _cpu(p: psutil.Process) -> float:
    """CPU of a child process; the first reading of a new child only starts its counter (0)."""
    known = _seen.setdefault(p.pid, p)
    try:
        return known.cpu_percent(None)
    except psutil.Error:
        return 0.0


def _rss(p: psutil.Process) -> int:
    try:
        return p.memory_info().rss
    except psutil.Error:
        return 0


def stored_ids(history: Path) -> set[str]:
    with sqlite3.connect(f"file:{history}?mode=ro", uri=True) as db:
        return {r[0] for r in db.execute("SELECT message_id FROM scores")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.devtools.station_bench",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--beds", type=int, default=200)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--cadence", type=float, default=default("scoring", "cadence_s"),
                        help="seconds between a bed's scores (default: the daemon's scoring.cadence_s)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args(argv)
    if (why := chrome.missing()) is not None:
        parser.error(why)
    if args.beds < 1 or not args.minutes > 0 or not args.cadence > 0:
        parser.error("--beds, --minutes and --cadence must be > 0")
    load_before = _load()
    with ward("--client-id", "station-bench", window=(1600, 1000)) as rig:
        rig.beds = beds = SimBeds.ward(rig.port, args.beds)
        beds.start()
        rig.driver.get(rig.url + "/")
        sampler = Sampler({"station": psutil.Process(rig.station.pid), "mosquitto": psutil.Process(rig.broker.pid),
                           "browser": psutil.Process(rig.driver.service.process.pid)}).start()
        seconds = args.minutes * 60
        try:
            with tqdm(total=round(seconds), unit="s", desc=f"{args.beds} beds every {args.cadence:g} s") as bar:
                def tick(elapsed: float) -> None:
                    bar.n = min(round(elapsed), bar.total)
                    bar.refresh()

                published = beds.run(seconds, args.cadence,
                                     lambda bed, k: round((k * 0.37 + len(bed.bed)) % 7, 2), on_tick=tick)
        finally:
            sampler.stop()
        sent = {mid for ids in beds.sent.values() for mid in ids}
        history = rig.work / "state" / "history.sqlite3"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not sent <= stored_ids(history):
            time.sleep(1)
        have = stored_ids(history)
        time.sleep(2)  # the last live updates reach the page
        stats: dict[str, Any] = rig.driver.execute_script("return window.neopainStation")
        load_after = _load()
    lost = len(sent - have)
    report = write_report(args, published, beds.failed, lost, stats, sampler.rows, load_before, load_after)
    print(report)
    return 0 if lost == 0 else 1


def write_report(args: argparse.Namespace, published: int, failed: int, lost: int, stats: dict[str, Any],
                 rows: list[dict[str, float]], load_before: str, load_after: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = [float(v) for v in stats.get("latencies", [])]
    steady = [r for r in rows if r["t"] > 20]  # after start-up
    def col(name: str) -> list[float]:
        return [r[name] for r in steady if name in r]

    def summary(name: str) -> str:
        v = col(name)
        return f"{statistics.mean(v):.1f} mean, {max(v):.1f} max" if v else "n/a"

    args.out.mkdir(parents=True, exist_ok=True)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4))
    if lat:
        a1.hist(lat, bins=60, color="#0d47a1")
        a1.axvline(_percentile(lat, 50), color="k", ls="--", label=f"p50 {_percentile(lat, 50):.0f} ms")
        a1.axvline(_percentile(lat, 99), color="r", ls="--", label=f"p99 {_percentile(lat, 99):.0f} ms")
        a1.legend()
    a1.set_xlabel("score-to-page latency, ms")
    a1.set_ylabel("scores")
    for name, color in (("station", "#c62828"), ("mosquitto", "#2e7d32"), ("browser", "#6a1b9a")):
        a2.plot([r["t"] for r in rows if f"{name}_cpu" in r], [r[f"{name}_cpu"] for r in rows if f"{name}_cpu" in r],
                label=name, color=color)
        a3.plot([r["t"] for r in rows if f"{name}_rss" in r], [r[f"{name}_rss"] for r in rows if f"{name}_rss" in r],
                label=name, color=color)
    a2.set_xlabel("s")
    a2.set_ylabel("CPU, % of one core")
    a2.legend()
    a3.set_xlabel("s")
    a3.set_ylabel("RSS, MiB")
    a3.legend()
    fig.tight_layout()
    fig.savefig(args.out / "station_200_beds.png", dpi=110)
    plt.close(fig)
    rate = args.beds / args.cadence
    p = (lambda q: f"{_percentile(lat, q):.0f}") if lat else (lambda q: "n/a")
    text = f"""# Web station: {args.beds} beds at the production cadence

Written by `python -m appliance.devtools.station_bench --beds {args.beds} --minutes {args.minutes:g}`
(`appliance/devtools/station_bench.py` says how). {args.beds} simulated beds each published a score every
{args.cadence:g} s (`scoring.cadence_s`, the daemon's default): {rate:.0f} scores/s, {published} scores in
{args.minutes:g} min, QoS 1 with the daemon's message expiry, into mosquitto on 127.0.0.1. The station ran as
`neopain station run --client-id station-bench` (persistent session, manual acks after each history commit, WAL
with `synchronous=FULL`), and a headless Chromium kept the board of all {args.beds} beds open.

Machine load (`uptime`): {load_before} before, {load_after} after; the machine is shared with other
work, so CPU figures include contention.

| measure | value |
| --- | --- |
| scores published | {published} ({failed} refused by the client) |
| scores missing from the station's history | **{lost}** |
| scores seen live by the page | {stats.get('scores', 0)} |
| score-to-page latency p50 / p99 / max | **{p(50)} / {p(99)} / {max(lat) if lat else 'n/a':.0f} ms** |
| station CPU (% of one core, after the first 20 s) | {summary('station_cpu')} |
| station RSS, MiB | {summary('station_rss')} |
| mosquitto CPU / RSS | {summary('mosquitto_cpu')} / {summary('mosquitto_rss')} MiB |
| browser (Chromium, all processes) CPU / RSS | {summary('browser_cpu')} / {summary('browser_rss')} MiB |

Latency runs from the score's `created_utc` (set by the builder on the publishing side) to the page's
`EventSource` handler (`Date.now()`), on one clock: broker, station (board, history commit, acknowledgement),
server-sent event and the browser's parsing. It includes the browser's own work, since the page swaps a
rendered tile per score. The page records each bed's newest score per update; a score overtaken by the next
one of the same bed within one commit (not seen here at {args.cadence:g} s per bed) would not be counted.

{NOTE}

![latency, CPU and RSS](station_200_beds.png)
"""
    (args.out / "station_200_beds.md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
