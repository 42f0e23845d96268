"""The calibration round trip through the *running* daemon (issue 7's "must show").

A synthetic site whose nurses rate one NIPS point higher than the model (the local reference is
``ref(raw) = clip(round(raw + 1), 0, 7)``, an integer like a real NIPS total) is calibrated end to end:

1. a simulated bed feeds ``neopain run`` (a subprocess, tiny exported model, real mosquitto);
2. the test plays the nurse: calibration sessions are opened for three pseudonymous infants in turn over the
   MQTT command topic and every published score is rated (``cmd/calibration/rate`` with rater id and time,
   one rating through ``neopain calibrate rate``); the daemon records the pairs in its sessions database;
3. ``neopain calibrate fit`` (subject-wise CV, test-sized minimums through its options) signs a bundle with
   the device key, ``neopain calibrate install`` installs it, SIGHUP makes the daemon reload it;
4. the MAE of the published scores against the local reference drops (measured on what the subscriber
   received), and health names the active bundle;
5. a tampered bundle (one byte changed on disk), a foreign one (another device's key) and one made for
   another model are each refused on SIGHUP, with the reason on the health topic and in the daemon log,
   while the calibrated map stays active.

The bed replays one synthetic recording: the three "infants" are session labels over different stretches
of it (the map depends on the raw score only, so that is all the fit needs to see; the minimum numbers of
infants and ratings are lowered through ``calibrate fit``'s options, not in the defaults).
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from appliance.scoring import bundles
from calibration import bundle as B
from tests.appliance.daemon_fixtures import cohort
from tests.appliance.daemon_harness import ROOT, DaemonProcess, NotifySocket
from tests.appliance.mqtt.broker import broker_factory, publish_raw, subscriber_factory

# Shared with the daemon e2e test (pytest finds a module's fixtures by attribute name): the same cohort (module
# scope), real mosquitto and subscriber.
__all__ = ["cohort", "broker_factory", "subscriber_factory"]

INFANTS = ("I01", "I02", "I03")
RATINGS_PER_INFANT = 7
VERSION = "site-v1"
PREFIX = "neopain/rt/bed-1"
GAIN = 120.0


@pytest.fixture(scope="module")
def model_dir(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny estimator (random weights) with its NIPS output spread out, exported to ONNX.

    Why: with random weights the raw NIPS barely moves (about 3.6 +- 0.03 on this recording), so any map would
    be fitted on one point. The last linear layer is rescaled around the cohort's mean pre-activation
    (``GAIN`` times the logit distance) so raw scores span most of 0-7 and the fitted map is a real line.
    """
    import torch

    from models.configs import tiny_config
    from models.data.loader import load_windows
    from models.estimator import create_pain_estimator
    from models.export import export_model_dir
    from models.samples import samples_from_windows
    from models.training import predict

    torch.manual_seed(0)
    cfg = tiny_config()
    model = create_pain_estimator(cfg).eval()
    nips = predict(model, samples_from_windows(load_windows(cohort, progress=False), cfg, progress=False))
    center = float(np.mean(np.log(nips / (7.0 - nips))))  # the mean logit of NIPS / 7
    head = model.fusion.nips_head
    with torch.no_grad():
        head.weight.mul_(GAIN)
        head.bias.copy_(GAIN * (head.bias - center))
    out = tmp_path_factory.mktemp("model")
    export_model_dir(model, cfg, out, progress=False)
    return out


def reference(raw: float) -> int:
    """What this site's nurses score for a raw model NIPS: one point higher, as an integer NIPS total."""
    return int(np.clip(round(raw + 1.0), 0, 7))


def neopain(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``neopain ARGS`` as an engineer types it on the device (a separate process)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, daemon: DaemonProcess) -> Any:
    """Poll ``predicate`` until truthy; fail naming ``what`` with the daemon's log tail (or its exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert daemon.proc is not None and daemon.proc.poll() is None, f"daemon exited: {daemon.text()[-3000:]}"
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{daemon.text()[-3000:]}")


class Site:
    """The test's view of the device: its MQTT topics, its sessions database and its daemon."""

    def __init__(self, daemon: DaemonProcess, sub: Any, port: int, db: Path) -> None:
        self.daemon, self.sub, self.port, self.db = daemon, sub, port, db

    def command(self, name: str, args: dict[str, Any]) -> None:
        publish_raw(self.port, f"{PREFIX}/cmd/{name}", json.dumps(args))

    def scores(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on_topic("/score")]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5.0) as db:
            return db.execute(sql, params).fetchall()

    def open_session(self) -> tuple[str, float] | None:
        rows = self.query("SELECT infant, started FROM sessions WHERE stopped IS NULL ORDER BY id DESC LIMIT 1")
        return rows[0] if rows else None

    def raw_of(self, message_ids: list[str]) -> dict[str, float]:
        marks = ",".join("?" * len(message_ids))
        return dict(self.query(f"SELECT message_id, raw FROM scores WHERE message_id IN ({marks})",
                               tuple(message_ids)))

    def start_session(self, infant: str) -> float:
        self.command("calibration/start", {"infant": infant, "by": "test-engineer"})
        _, started = wait_until(lambda: (s := self.open_session()) and s[0] == infant and s, 30,
                                f"session {infant} to open", self.daemon)
        return float(started)

    def scores_after(self, t_utc: float, n: int, timeout: float, **match: Any) -> list[dict[str, Any]]:
        """The first ``n`` received scores whose window ends after ``t_utc`` (and whose fields equal ``match``)."""
        from appliance.scoring.ratings import parse_time

        def ready() -> list[dict[str, Any]] | None:
            got = [s for s in self.scores() if parse_time(s["window"]["end_utc"]) > t_utc
                   and all(s.get(k) == v for k, v in match.items())]
            return got[:n] if len(got) >= n else None

        return wait_until(ready, timeout, f"{n} scores {match or ''} after {t_utc}", self.daemon)

    def health_says(self, *texts: str, timeout: float = 30) -> dict[str, Any]:
        """Ask for health (cmd/health/request) until one message's detail holds every text."""
        def ready() -> dict[str, Any] | None:
            for m in reversed(self.sub.on_topic("/health")):
                h = m.json()
                if all(t in (h.get("detail") or "") for t in texts):
                    return h
            self.command("health/request", {})
            time.sleep(0.5)
            return None

        return wait_until(ready, timeout, f"health naming {texts}", self.daemon)

    def refused_reloads(self) -> int:
        return self.daemon.text().count("calibration: reload refused")


def mae(pred: list[float], ref: list[float]) -> float:
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(ref, float))))


def flip_a_map_byte(path: Path) -> None:
    """Change one digit of the first y knot in place (still valid JSON: only the signature can catch it)."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"y": [') + len(b'"y": [')
    while not chr(data[at]).isdigit():
        at += 1
    data[at] = ord(str((int(chr(data[at])) + 1) % 10))
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_calibration_round_trip_through_the_running_daemon(cohort: Path, model_dir: Path, broker_factory,
                                                            subscriber_factory, tmp_path: Path) -> None:
    from appliance.devtools.simulate import SimulatedBed

    broker = broker_factory()
    sub = subscriber_factory(broker.port, [f"{PREFIX}/#"])
    key = tmp_path / "device.key"
    keygen = neopain("calibrate", "keygen", "--key", str(key))
    assert keygen.returncode == 0 and B.key_id(B.read_key(key)) in keygen.stdout, keygen.stderr
    cal_dir, db = tmp_path / "calibration", tmp_path / "sessions.sqlite"
    notify = NotifySocket()
    bed = SimulatedBed(cohort, workdir=tmp_path / "bed").start()
    config = bed.write_appliance_config(
        tmp_path / "appliance.toml",
        device={"id": "rt-dev", "site": "rt", "bed": "bed-1"},
        mqtt={"host": "127.0.0.1", "port": broker.port, "message_expiry_s": 120, "health_interval_s": 2.0},
        scoring={"model_dir": str(model_dir), "model_config": "tiny", "backends": ["onnxruntime"], "cadence_s": 1.0},
        calibration={"bundle": str(cal_dir / B.CURRENT), "key_file": str(key), "sessions_db": str(db)})
    daemon = DaemonProcess(config, tmp_path / "daemon.log",
                           {**bed.environment(), "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "5000000"})
    site = Site(daemon, sub, broker.port, db)
    started_at = time.monotonic()
    try:
        daemon.start()
        assert notify.wait_for(lambda n: "1" in n.assignments("READY"), 90), daemon.text()[-3000:]
        first = site.scores_after(0.0, 1, 60)[0]
        assert first["calibration_version"] == "uncalibrated" and "uncalibrated" in first["quality_flags"]
        model_version = first["model_version"]

        # -- 1. sessions: the nurse rates every published (uncalibrated = raw) score -----------------------
        rated: list[dict[str, Any]] = []
        for i, infant in enumerate(INFANTS):
            started = site.start_session(infant)
            for j, score in enumerate(site.scores_after(started, RATINGS_PER_INFANT, 60)):
                args = {"nips": reference(score["nips"]), "rater": f"RN{1 + (i + j) % 2}",
                        "at": score["window"]["end_utc"]}
                if i == 0 and j == 0:  # one rating typed at the bedside terminal instead of the ward app
                    cli = neopain("calibrate", "rate", "--db", str(db), "--nips", str(args["nips"]),
                                  "--rater", "RN9", "--at", args["at"])
                    assert cli.returncode == 0 and "stored" in cli.stdout, cli.stderr
                else:
                    site.command("calibration/rate", args)
                rated.append(score)
            site.command("calibration/stop", {})
            wait_until(lambda: site.open_session() is None, 30, f"session {infant} to close", daemon)
        n_ratings = len(INFANTS) * RATINGS_PER_INFANT
        wait_until(lambda: site.query("SELECT COUNT(*) FROM ratings")[0][0] >= n_ratings, 30, "ratings", daemon)
        raws = site.raw_of([s["message_id"] for s in rated])
        assert len(raws) == len(rated), "the daemon did not record every rated score"
        # uncalibrated: the published NIPS is the raw score (to the message's 4 decimals)
        assert all(abs(raws[s["message_id"]] - s["nips"]) <= 5e-5 for s in rated)
        mae_before = mae([s["nips"] for s in rated], [reference(s["nips"]) for s in rated])

        # -- 2. fit (subject-wise CV), sign, install ------------------------------------------------------
        out = tmp_path / "fit"
        fit = neopain("calibrate", "fit", "--db", str(db), "--out", str(out), "--method", "linear", "--folds", "3",
                      "--min-infants", str(len(INFANTS)), "--min-ratings", str(n_ratings - 3),
                      "--version", VERSION, "--model-version", model_version, "--key", str(key),
                      "--created-by", "round-trip-test")
        assert fit.returncode == 0, fit.stdout + fit.stderr
        summary = json.loads((out / "fit.json").read_text())
        assert summary["n_infants"] == len(INFANTS) and summary["n_ratings"] == n_ratings
        assert summary["cv_mae_after"] < summary["cv_mae_before"]
        install = neopain("calibrate", "install", str(out / B.BUNDLE_FILE), "--dir", str(cal_dir), "--key", str(key),
                          "--model-version", model_version)
        assert install.returncode == 0 and "SIGHUP" in install.stdout, install.stderr
        listing = neopain("calibrate", "list", "--dir", str(cal_dir))
        assert re.search(rf"^\* {VERSION}\s+linear", listing.stdout, re.M), listing.stdout

        # -- 3. SIGHUP: the daemon reloads without restarting; scores move toward the local reference ---------
        eval_started = site.start_session("EVAL")  # records the raw score of every published one from here on
        pid = daemon.proc.pid
        daemon.proc.send_signal(signal.SIGHUP)
        calibrated = site.scores_after(eval_started, 8, 60, calibration_version=VERSION)
        ids = [s["message_id"] for s in calibrated]
        raw_after = wait_until(lambda: r if len(r := site.raw_of(ids)) == len(ids) else None, 30,
                               "raw scores of the calibrated messages", daemon)
        ref_after = [reference(raw_after[s["message_id"]]) for s in calibrated]
        mae_after = mae([s["nips"] for s in calibrated], ref_after)
        mae_raw_same = mae([raw_after[s["message_id"]] for s in calibrated], ref_after)
        assert daemon.proc.pid == pid and daemon.proc.poll() is None
        assert all("uncalibrated" not in s["quality_flags"] for s in calibrated)
        assert mae_after < mae_before and mae_after < mae_raw_same, (mae_before, mae_raw_same, mae_after)
        site.health_says(f"calibration {VERSION} active")
        print(f"\nsite bias +1 NIPS, {summary['n_infants']} infants, {summary['n_ratings']} ratings: "
              f"CV MAE {summary['cv_mae_before']:.3f} -> {summary['cv_mae_after']:.3f}; published scores vs "
              f"local reference: MAE {mae_before:.3f} before reload ({len(rated)} scores), {mae_after:.3f} after "
              f"({len(calibrated)} scores; raw on the same {mae_raw_same:.3f}); raw NIPS range "
              f"{min(raws.values()):.2f}-{max(raws.values()):.2f}")

        def still_calibrated(since: float) -> None:
            later = site.scores_after(since, 3, 60)
            assert all(s["calibration_version"] == VERSION for s in later), [s["calibration_version"] for s in later]
            ids = [s["message_id"] for s in later]
            raw = wait_until(lambda: r if len(r := site.raw_of(ids)) == len(ids) else None, 30, "raw scores", daemon)
            # the calibrated offset is still applied
            assert mae([s["nips"] for s in later], [reference(raw[i]) for i in ids]) < mae_before

        def refused_on_sighup(expected: str) -> None:
            before = site.refused_reloads()
            sent = time.time()
            daemon.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: site.refused_reloads() > before, 30, "the reload to be refused", daemon)
            assert expected in daemon.text().split("calibration: reload refused")[-1].splitlines()[0]
            site.health_says(f"calibration {VERSION} active", "calibration reload refused", expected)
            still_calibrated(sent)

        # -- 4a. tampered: one byte of the active bundle changed on disk --------------------------------------
        flip_a_map_byte(cal_dir / "bundles" / VERSION / B.BUNDLE_FILE)
        refused_on_sighup("signature.value: does not match the payload (tampered or corrupted bundle)")

        # -- 4b. foreign: signed with another device's key; install refuses it, so it is put there by hand ----
        other_key = B.read_key(B.generate_key(tmp_path / "other.key"))
        fitted = json.loads((out / B.BUNDLE_FILE).read_text())["payload"]["map"]
        foreign = B.write_bundle(tmp_path / "foreign.json", B.make_bundle(
            version="site-foreign", model_version=model_version, x=fitted["x"], y=fitted["y"], key=other_key,
            method="linear", created_by="another-device"))
        refused = neopain("calibrate", "install", str(foreign), "--dir", str(cal_dir), "--key", str(key))
        assert refused.returncode == 2 and "signature.key_id" in refused.stderr, refused.stdout + refused.stderr
        (cal_dir / "bundles" / "site-foreign").mkdir()
        os.replace(foreign, cal_dir / "bundles" / "site-foreign" / B.BUNDLE_FILE)
        os.symlink(Path("bundles") / "site-foreign", cal_dir / ".current.tmp")
        os.replace(cal_dir / ".current.tmp", cal_dir / B.CURRENT)
        refused_on_sighup("signature.key_id")

        # -- 4c. another model: signed with this device's key, installs (no --model-version), daemon refuses --
        other_model = B.write_bundle(tmp_path / "other-model.json", B.make_bundle(
            version="site-other-model", model_version=model_version + "-other", x=fitted["x"], y=fitted["y"],
            key=B.read_key(key), method="linear"))
        installed = neopain("calibrate", "install", str(other_model), "--dir", str(cal_dir), "--key", str(key))
        assert installed.returncode == 0, installed.stderr
        refused_on_sighup(f"bundle made for model '{model_version}-other', the engines run '{model_version}'")

        assert daemon.proc.pid == pid
        assert daemon.terminate() == 0, daemon.text()[-3000:]
        print(f"round trip took {time.monotonic() - started_at:.0f} s")
    finally:
        daemon.kill()
        bed.stop()
        notify.close()


def test_fit_with_identical_ratings_signs_a_bundle(tmp_path: Path) -> None:
    """Found by the round trip: a nearly constant raw score rated the same by every nurse leaves ICC undefined
    (zero variance); the fit summary must carry that as null, not NaN, or the bundle cannot be signed."""
    from appliance.scoring.ratings import Pair
    from calibration.fit import fit_calibration, write_report

    rng = np.random.default_rng(0)
    pairs = [Pair(float(3.2 + 0.1 * rng.random()), 4.0, f"RN{i % 2}", f"I{i % 3}") for i in range(21)]
    result = fit_calibration(pairs, method="linear", k=3, min_infants=3, min_ratings=20)
    summary = result.summary()
    assert summary["icc_after"] is None and summary["cv_mae_after"] < summary["cv_mae_before"]
    key = B.read_key(B.generate_key(tmp_path / "k"))
    b = B.make_bundle(version="v1", model_version="m", x=list(result.map.x), y=list(result.map.y), key=key,
                      method="linear", fit=summary)
    assert bundles.verify_bundle(json.loads(json.dumps(b)), key).payload["fit"]["icc_after"] is None
    assert "| ICC(A,1) device vs nurse | " in write_report(result, pairs, tmp_path)["markdown"].read_text()
