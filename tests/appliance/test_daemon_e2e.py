"""End to end: simulated bed -> ``neopain run`` (a subprocess) -> a real mosquitto -> a subscriber.

The bed plays a synthetic recording through the real camera (video file), ALSA (file plugin) and serial
(pty + Masimo emulator) paths; the daemon runs the tiny model of ``neopain train --final`` (1 epoch) exported by
``neopain export`` with its model card, which health and the start log must name, on ONNX Runtime.
Mid-run the broker is SIGKILLed and restarted, and the daemon is stopped (SIGTERM) and started again.
Every score the daemon made (its log line per score, written after the outbox commit) must reach the
subscriber at least once (dedup by message id): counted, zero lost. sd_notify is read from a real unix
datagram socket given as ``NOTIFY_SOCKET``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from appliance.mqtt import messages
from tests.appliance.daemon_fixtures import cohort, model_dir
from tests.appliance.daemon_harness import ROOT, DaemonProcess, NotifySocket
from tests.appliance.mqtt.broker import broker_factory, subscriber_factory

# Shared fixtures, imported (pytest finds a module's fixtures by attribute name): a small cohort and the tiny
# model (module scope), the MQTT tests' real mosquitto and subscriber.
__all__ = ["cohort", "model_dir", "broker_factory", "subscriber_factory"]

SCORE_VALIDATOR = jsonschema.Draft202012Validator(messages.SCORE_SCHEMA)
HEALTH_VALIDATOR = jsonschema.Draft202012Validator(messages.HEALTH_SCHEMA)


def _write_config(bed, path: Path, port: int, model_dir: Path) -> Path:
    return bed.write_appliance_config(
        path,
        device={"id": "e2e-dev", "site": "e2e", "bed": "bed-1"},
        mqtt={"host": "127.0.0.1", "port": port, "message_expiry_s": 120, "health_interval_s": 5.0},
        # No scoring.model_config: the network size comes from the model's manifest.
        scoring={"model_dir": str(model_dir), "backends": ["onnxruntime"], "cadence_s": 1.0},
        calibration={"bundle": ""},
    )


def _score_ids(sub) -> dict[str, dict]:
    return {m.json()["message_id"]: m.json() for m in sub.on_topic("/score")}


@pytest.mark.slow
def test_scores_survive_broker_and_daemon_restarts(cohort: Path, model_dir: Path, broker_factory,
                                                   subscriber_factory, tmp_path: Path) -> None:
    from appliance.devtools.simulate import SimulatedBed

    broker = broker_factory(persistence=True)  # the subscriber's session survives the broker's restart
    sub = subscriber_factory(broker.port, ["neopain/e2e/bed-1/#"], persistent_id="e2e-collector")
    notify = NotifySocket()
    bed = SimulatedBed(cohort, workdir=tmp_path / "bed").start()
    daemons: list[DaemonProcess] = []
    try:
        config = _write_config(bed, tmp_path / "appliance.toml", broker.port, model_dir)
        env = {**bed.environment(), "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"}

        def produced() -> list[tuple[int, str]]:
            return [p for d in daemons for p in d.produced()]

        def wait_produced(n: int, timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while len(produced()) < n and time.monotonic() < deadline:
                assert all(d.proc.poll() is None for d in daemons[-1:]), daemons[-1].text()[-3000:]
                time.sleep(0.1)
            assert len(produced()) >= n, daemons[-1].text()[-3000:]

        daemons.append(DaemonProcess(config, tmp_path / "daemon1.log", env).start())
        assert notify.wait_for(lambda n: "1" in n.assignments("READY"), 60), daemons[0].text()[-3000:]
        wait_produced(3, 30)
        assert sub.wait_for(lambda s: len(_score_ids(s)) >= 2, 10)

        # broker outage: the daemon keeps scoring into its outbox
        broker.kill()
        before = len(produced())
        wait_produced(before + 2, 15)
        broker.start()

        # daemon restart: SIGTERM (graceful), then a new process on the same outbox
        wait_produced(len(produced()) + 1, 15)
        assert daemons[0].terminate() == 0, daemons[0].text()[-3000:]
        assert "1" in notify.assignments("STOPPING")
        daemons.append(DaemonProcess(config, tmp_path / "daemon2.log", env).start())
        assert notify.wait_for(lambda n: n.assignments("READY").count("1") >= 2, 60), daemons[1].text()[-3000:]
        wait_produced(len(produced()) + 3, 30)

        made = produced()
        made_ids = {i for _, i in made}
        assert sub.wait_for(lambda s: made_ids <= set(_score_ids(s)), 30), \
            f"lost: {sorted(made_ids - set(_score_ids(sub)))}"
        assert daemons[1].terminate() == 0, daemons[1].text()[-3000:]
    finally:
        for d in daemons:
            d.kill()
        bed.stop()

    # counted: every produced score received (dedup by id), nothing received that was not produced
    made = [p for d in daemons for p in d.produced()]
    received = _score_ids(sub)
    raw_count = len(sub.on_topic("/score"))
    assert {i for _, i in made} == set(received), "received scores the daemons did not log, or lost some"
    sequences = [s for s, _ in made]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences))), "gap in the durable sequence"
    print(f"\nscores produced {len(made)}, received {raw_count} messages, {len(received)} distinct, lost 0")
    for msg in received.values():
        SCORE_VALIDATOR.validate(msg)
        assert 0.0 <= msg["nips"] <= 7.0 and msg["device_id"] == "e2e-dev"
        assert any(m["used"] for m in msg["modalities"].values())
        assert msg["model_version"].startswith("neopain-tiny-")
    statuses = [m.payload.decode() for m in sub.on_topic("/status")]
    assert statuses[-1] == "offline" and "online" in statuses
    health = [m.json() for m in sub.on_topic("/health")]
    assert health and health[-1]["engine_backend"] == "onnxruntime"
    assert any(h["state"] in ("ok", "degraded") for h in health)
    # Health and the start log name the model and the card `neopain export` carried from beside the checkpoint.
    manifest = json.loads((model_dir / "manifest.json").read_text())
    card = json.loads((model_dir / "model_card.json").read_text())
    named = [h["model"] for h in health if "model" in h]
    assert named and all(m == named[0] for m in named), named
    assert named[0]["version"] == manifest["model_version"] and named[0]["config"] == "tiny"
    assert {m["model_version"] for m in received.values()} == {manifest["model_version"]}
    assert named[0]["card"]["version"] == card["model_version"] == manifest["model_card"]["model_version"]
    assert named[0]["card"]["path"] == str(model_dir / "model_card.md")
    assert named[0]["card"]["summary"].startswith(f"{card['model_version']}; fusion tiny; trained "
                                                  f"{card['created_utc'][:10]} on {card['data']['infants']} infants")
    for h in health:
        HEALTH_VALIDATOR.validate(h)
    assert f"model card {model_dir / 'model_card.md'}: {named[0]['card']['summary']}" in daemons[0].text()

    # sd_notify over the real socket: READY twice (two starts), watchdog pings, STATUS text, STOPPING
    assert notify.assignments("READY").count("1") == 2
    assert len(notify.assignments("WATCHDOG")) >= 2
    statuses = notify.assignments("STATUS")
    assert any(s.startswith("scoring every 1 s with onnxruntime") for s in statuses)
    assert any("scores" in s and "modalities" in s for s in statuses), statuses
    notify.close()


def test_bad_config_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text("[scoring]\ncadence_s = 2.0\nbackend = \"torch\"\n")
    config.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "appliance.daemon", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{config}:3: scoring.backend: unknown key" in lines[0]


def _exit_3_health(tmp_path: Path, broker_factory, subscriber_factory, model_dir: Path,
                   model_config: str) -> dict:
    """Run a daemon with no sensors on ``model_dir``; it must exit 3 after publishing a ``no_score`` health,
    which is returned."""
    broker = broker_factory()
    sub = subscriber_factory(broker.port, ["neopain/+/+/health"])
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'[device]\nid = "d1"\nsite = "s"\nbed = "b"\n'
        f'[camera]\nenabled = false\n[microphone]\nenabled = false\n[monitor]\nport = "/dev/null-monitor"\n'
        f'[scoring]\nmodel_dir = "{model_dir}"\nmodel_config = "{model_config}"\nbackends = ["onnxruntime"]\n'
        f'[mqtt]\nport = {broker.port}\n[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n'
        f'[calibration]\nbundle = ""\n')
    config.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "appliance.daemon", "--config", str(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 3, result.stderr[-2000:]
    assert sub.wait_for(lambda s: any(m.json()["state"] == "no_score" for m in s.messages), 5)
    return [m.json() for m in sub.messages][-1]


def test_pinned_model_size_that_the_manifest_contradicts_exits_3(tmp_path: Path, model_dir: Path, broker_factory,
                                                                 subscriber_factory) -> None:
    """``scoring.model_config`` set explicitly is a statement about the model: a tiny export under "full" is
    refused (exit 3, health says why), never run as the wrong size; unset ("auto") it runs (the test above)."""
    health = _exit_3_health(tmp_path, broker_factory, subscriber_factory, model_dir, "full")
    assert f"scoring.model_config is 'full' but {model_dir} holds a 'tiny' model" in health["detail"], health


def test_missing_model_exits_3_after_publishing_no_score_health(tmp_path: Path, broker_factory,
                                                                 subscriber_factory) -> None:
    health = _exit_3_health(tmp_path, broker_factory, subscriber_factory, tmp_path / "no-model", "tiny")
    assert health["state"] == "no_score" and "engines failed to load" in health["detail"]
    assert "no-model" in health["detail"]
