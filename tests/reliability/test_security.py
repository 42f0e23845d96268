"""Issue 8, security: TLS + ACL broker, command authentication, secrets' permissions, no raw media out.

The daemon runs as a real process on a simulated bed (the pattern of tests/appliance/test_daemon_e2e.py) against
a mosquitto with a TLS listener, a password file and an ACL (``secure_broker.py``). Every check is recorded with
``record_result`` (section ``security``) for ``docs/reliability.md``.
"""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from appliance.mqtt import messages
from appliance.config import ConfigError, check_config
from tests.appliance.daemon_fixtures import cohort, model_dir
from tests.appliance.daemon_harness import ROOT, DaemonProcess
from tests.appliance.mqtt.broker import free_port, publish_raw
from tests.reliability.secure_broker import SITE, STATION, make_secure_broker_files, password

# The daemon e2e tests' module fixtures (tests/appliance/daemon_fixtures.py), imported (pytest finds a module's
# fixtures by attribute name): a small synthetic cohort and the tiny model exported to ONNX.
__all__ = ["cohort", "model_dir"]

BED, OTHER = "bed-12", "bed-13"
PREFIX = f"neopain/{SITE}/{BED}"
MEDIA_SUFFIXES = {".npz", ".npy", ".wav", ".pcm", ".raw", ".mp4", ".avi", ".mkv", ".mov", ".png", ".jpg", ".jpeg",
                  ".bmp", ".y4m", ".flac", ".ogg", ".mp3"}
MEDIA_MAGIC = (b"RIFF", b"PK\x03\x04", b"\x93NUMPY", b"\x89PNG", b"\xff\xd8\xff", b"\x1aE\xdf\xa3", b"fLaC", b"OggS",
               b"ID3", b"YUV4MPEG2")


# ------------------------------------------------------------------------------------------------ clients
class Probe:
    """A paho MQTT 5 client that records CONNACK, PUBACK reason codes and messages (for one check)."""

    def __init__(self, port: int, *, auth: tuple[str, str] | None = None, ca: Path | None = None,
                 tls_default_ca: bool = False) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if auth:
            self.client.username_pw_set(*auth)
        if ca is not None or tls_default_ca:
            self.client.tls_set(ca_certs=None if ca is None else str(ca), cert_reqs=ssl.CERT_REQUIRED)
        self.port = port
        self.connack: Any = None
        self.connected = threading.Event()
        self.pubacks: dict[int, Any] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack = rc
        self.connected.set()

    def connect(self, timeout: float = 5.0) -> str:
        """``"ok"``, the refusal reason code, or the exception that stopped TCP/TLS (as text)."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=10)
        except Exception as exc:  # ssl.SSLCertVerificationError, ConnectionResetError, ...
            return f"{type(exc).__name__}: {exc}"
        self.client.loop_start()
        if not self.connected.wait(timeout):
            return "no CONNACK"
        return "ok" if not self.connack.is_failure else f"refused: {self.connack}"

    def publish(self, topic: str, payload: bytes | str, timeout: float = 5.0) -> Any:
        """QoS 1 publish; the broker's PUBACK reason code (0x87 'Not authorized' under the ACL)."""
        info = self.client.publish(topic, payload, qos=1)
        deadline = time.monotonic() + timeout
        while info.mid not in self.pubacks and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.pubacks.get(info.mid)

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _short(outcome: str) -> str:
    """A connection outcome for the table: the reason, not the whole OpenSSL sentence."""
    if "certificate verify failed" in outcome:
        return "TLS handshake failed (certificate verify failed)"
    return outcome[:60]


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def now_utc(offset_s: float = 0.0) -> str:
    when = datetime.now(timezone.utc) + timedelta(seconds=offset_s)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------------- media scanning
def media_files(roots: list[tuple[Path, bool]], since: float, exclude: set[Path]) -> list[Path]:
    """Files under ``roots`` ((folder, recursive) pairs) modified after ``since`` that look like video, audio or
    images (by suffix or by magic bytes)."""
    found = []
    for root, recursive in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*") if recursive else root.iterdir():
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_mtime < since:
                    continue
                if path.resolve() in exclude:
                    continue
                with open(path, "rb") as fh:
                    head = fh.read(16)
            except OSError:
                continue  # vanished meanwhile (another process's temporary file)
            if path.suffix.lower() in MEDIA_SUFFIXES or any(head.startswith(m) for m in MEDIA_MAGIC) \
                    or head[4:8] == b"ftyp":
                found.append(path)
    return found


def scan_roots(tmp_path: Path) -> list[tuple[Path, bool]]:
    """The test's state/runtime folders and the daemon's private TMPDIR (recursive), the system temp folder
    and /dev/shm (top level: other tests share them)."""
    import tempfile

    return [(tmp_path, True), (Path(tempfile.gettempdir()), False), (Path("/dev/shm"), False)]


def bed_inputs(bed: Any, cohort: Path) -> set[Path]:
    """What the simulated bed plays (synthetic input, not something the device recorded)."""
    return {bed.pcm_path.resolve(), (bed.workdir / "mic.fifo").resolve()} | {p.resolve() for p in cohort.rglob("*")}


# ----------------------------------------------------------------------------------- TLS + ACL + daemon
@pytest.fixture
def secure_broker(broker_factory, tmp_path: Path):
    files = make_secure_broker_files(tmp_path / "secure", free_port())
    broker = broker_factory(files.broker_lines())
    return broker, files


def daemon_env(bed: Any, tmp_path: Path) -> dict[str, str]:
    """The bed's environment plus a private TMPDIR, so whatever the daemon writes to "the temp dir" is scanned."""
    (tmp_path / "daemon-tmp").mkdir(exist_ok=True)
    return {**bed.environment(), "TMPDIR": str(tmp_path / "daemon-tmp")}


def _daemon_config(bed: Any, tmp_path: Path, model_dir: Path, mqtt_section: dict[str, Any], **extra: Any) -> Path:
    return bed.write_appliance_config(
        tmp_path / "appliance.toml",
        device={"id": "sec-dev-12", "site": SITE, "bed": BED},
        mqtt={"host": "127.0.0.1", "message_expiry_s": 120, "health_interval_s": 5.0, "publish_vitals": True,
              **mqtt_section},
        scoring={"model_dir": str(model_dir), "model_config": "tiny", "backends": ["onnxruntime"], "cadence_s": 1.0},
        calibration={"bundle": ""}, **extra)


@pytest.mark.slow
def test_tls_acl_commands_and_no_media_through_running_daemon(cohort: Path, model_dir: Path, secure_broker,
                                                               record_result, tmp_path: Path) -> None:
    from appliance.devtools.simulate import SimulatedBed

    broker, files = secure_broker
    station = Probe(broker.port, auth=STATION)
    assert station.connect() == "ok", broker.log_text()[-2000:]
    station.subscribe(f"neopain/{SITE}/#")

    pwfile = tmp_path / "bed-12.pw"
    pwfile.write_text(password(BED) + "\n")
    pwfile.chmod(0o600)
    started = time.time() - 1.0
    bed = SimulatedBed(cohort, workdir=tmp_path / "bed").start()
    daemon = None
    try:
        config = _daemon_config(bed, tmp_path, model_dir, {"port": files.tls_port, "tls_ca_file": str(files.ca),
                                                            "username": BED, "password_file": str(pwfile)})
        daemon = DaemonProcess(config, tmp_path / "daemon.log", daemon_env(bed, tmp_path)).start()

        def scores() -> list[dict[str, Any]]:
            return [json.loads(p) for t, p in list(station.messages) if t == f"{PREFIX}/score"]

        def alive() -> bool:
            assert daemon.proc.poll() is None, daemon.text()[-3000:]
            return True

        assert wait_until(lambda: alive() and len(scores()) >= 2, 120), daemon.text()[-3000:]
        got = scores()
        record_result("security", "daemon publishes over TLS (bed-12 user, password file, CA pinned)",
                      "scores delivered through the TLS listener",
                      f"{len(got)} scores received by the station; TLS port {files.tls_port}", True,
                      produced=len(daemon.produced()), delivered=len({m['message_id'] for m in got}))

        # --- TLS: no CA / wrong CA / plain TCP to the TLS port; anonymous refused on both listeners ------
        outcomes = {
            "wrong CA": Probe(files.tls_port, auth=STATION, ca=files.wrong_ca).connect(),
            "system CAs only": Probe(files.tls_port, auth=STATION, tls_default_ca=True).connect(),
            "plain TCP to TLS port": Probe(files.tls_port, auth=STATION).connect(),
            "anonymous (TLS)": Probe(files.tls_port, ca=files.ca).connect(),
            "anonymous (plain)": Probe(broker.port).connect(),
            "wrong password": Probe(files.tls_port, auth=(BED, "guess"), ca=files.ca).connect(),
        }
        for what in ("wrong CA", "system CAs only"):
            assert "certificate verify failed" in outcomes[what], outcomes
        assert outcomes["plain TCP to TLS port"] != "ok"
        for what in ("anonymous (TLS)", "anonymous (plain)", "wrong password"):
            assert outcomes[what].startswith("refused"), outcomes
        record_result("security", "TLS and authentication refusals",
                      "wrong/unknown CA fails the handshake; anonymous and wrong password refused at CONNACK",
                      "; ".join(f"{k}: {_short(v)}" for k, v in outcomes.items()), True)

        # --- ACL: bed-12's credentials cannot publish as bed-13, nor command any bed ------------------
        watcher = Probe(broker.port, auth=STATION)
        assert watcher.connect() == "ok"
        watcher.subscribe(f"neopain/{SITE}/{OTHER}/#")
        intruder = Probe(files.tls_port, auth=(BED, password(BED)), ca=files.ca)
        assert intruder.connect() == "ok"
        fake = json.dumps({"type": "score", "device_id": "sec-dev-12", "nips": 7}).encode()
        codes = {leaf: intruder.publish(f"neopain/{SITE}/{OTHER}/{leaf}", fake) for leaf in ("score", "health")}
        codes["cmd (own bed)"] = intruder.publish(f"{PREFIX}/cmd/calibration/stop", b"{}")
        codes["cmd (other bed)"] = intruder.publish(f"neopain/{SITE}/{OTHER}/cmd/calibration/stop", b"{}")
        time.sleep(1.0)
        assert all(rc is not None and rc.value == 0x87 for rc in codes.values()), codes
        assert watcher.messages == [], watcher.messages
        # had the bed's own cmd publish got through, the daemon would have logged the stop (no session open)
        assert "ignored command" not in daemon.text() and "calibration: command" not in daemon.text()
        record_result("security", "bed-12 credentials publish to bed-13 / write cmd topics",
                      "broker refuses (PUBACK 0x87 Not authorized); bed-13 subscriber receives nothing",
                      "; ".join(f"{k}: 0x{v.value:02X}" for k, v in codes.items())
                      + f"; bed-13 subscriber got {len(watcher.messages)}", True)
        intruder.close()
        watcher.close()

        # --- commands: only the station may send; malformed ones refused naming the field -------------
        cmd = f"{PREFIX}/cmd"
        start_id = "st-1"
        rc = station.publish(f"{cmd}/calibration/start", json.dumps(
            {"infant": "I07", "command_id": start_id, "sent_utc": now_utc(), "bed": BED}))
        assert rc is not None and not rc.is_failure
        assert wait_until(lambda: "session 1 started for infant I07" in daemon.text(), 20), daemon.text()[-3000:]
        bad = {  # what is sent -> the field (or word) the refusal must name
            "bad JSON": ("calibration/rate", b'{"nips": 3, "rater": ', "not UTF-8 JSON"),
            "not UTF-8": ("calibration/rate", b"\xff\xfe{}", "not UTF-8 JSON"),
            "not an object": ("calibration/rate", b"[3]", "must be a JSON object"),
            "deep nesting": ("calibration/rate", b"[" * 3000, "not UTF-8 JSON"),
            "oversize": ("calibration/rate", json.dumps({"nips": 3, "rater": "x" * 5000}).encode(), "exceeds 4096"),
            "unknown command": ("reboot", b"{}", "is not one of"),
            "wrong bed": ("calibration/stop", json.dumps({"bed": OTHER}).encode(), "bed:"),
            "stale": ("calibration/stop", json.dumps({"command_id": "old-1", "sent_utc": now_utc(-3600)}).encode(),
                      "sent_utc:"),
            "replayed id": ("calibration/start", json.dumps({"infant": "I99", "command_id": start_id,
                                                              "sent_utc": now_utc()}).encode(), "command_id:"),
            "bad command_id type": ("calibration/stop", b'{"command_id": 5}', "command_id:"),
            "wrong type": ("calibration/rate", json.dumps({"nips": "three", "rater": "RN1"}).encode(), "nips:"),
        }
        before = daemon.text()
        for what, (name, payload, _) in bad.items():
            rc = station.publish(f"{cmd}/{name}", payload)
            assert rc is not None and not rc.is_failure, (what, rc)
        # an anonymous client cannot even connect to send one
        assert Probe(broker.port).connect().startswith("refused")

        def refusal_lines() -> list[str]:
            new = daemon.text()[len(before):]
            return [ln for ln in new.splitlines() if "ignored command" in ln or "calibration: command:" in ln]

        assert wait_until(lambda: len(refusal_lines()) >= len(bad), 20), daemon.text()[-3000:]
        lines = refusal_lines()
        named = {what: any(word in ln for ln in lines) for what, (_, _, word) in bad.items()}
        assert all(named.values()), (named, lines)
        assert "I99" not in daemon.text(), "a replayed command was executed"
        produced_before = len(daemon.produced())
        rc = station.publish(f"{cmd}/calibration/stop", json.dumps({"command_id": "st-2", "sent_utc": now_utc()}))
        assert wait_until(lambda: "session 1 stopped" in daemon.text(), 20), daemon.text()[-3000:]
        assert wait_until(lambda: alive() and len(daemon.produced()) >= produced_before + 2, 30)
        record_result("security", f"{len(bad)} malformed/unauthorised commands sent to the running daemon",
                      "each refused with a log line naming the field; daemon keeps scoring; replay not executed",
                      f"{len(lines)} refusal lines, all {len(bad)} name their field; valid start/stop executed; "
                      f"{len(daemon.produced()) - produced_before} scores after; anonymous sender refused at CONNACK",
                      True)

        # --- no media in any MQTT message ------------------------------------------------------------
        assert daemon.terminate() == 0, daemon.text()[-3000:]
        msgs = [(t, p) for t, p in station.messages if "/cmd/" not in t]  # the device's, not our commands
        largest = max(len(p) for _, p in msgs)
        leaves = sorted({t.rsplit("/", 1)[-1] for t, _ in msgs})
        bodies = [json.loads(p) for t, p in msgs if t.endswith(("/score", "/health", "/vitals"))]
        schema_keys = {k for s in (messages.SCORE_SCHEMA, messages.HEALTH_SCHEMA, messages.VITALS_SCHEMA)
                       for k in s["properties"]}
        assert largest < 4096, largest
        assert set(leaves) <= {"score", "status", "health", "vitals"}, leaves
        assert all(set(b) <= schema_keys for b in bodies)
        record_result("security", "MQTT messages carry no media (debug off)",
                      "only score/health/vitals/status, schema keys only, small payloads",
                      f"{len(msgs)} messages on {', '.join(leaves)}; largest payload {largest} B", True)

        # --- no media files written (debug off) ------------------------------------------------------
        roots = scan_roots(tmp_path)
        found = media_files(roots, started, exclude=bed_inputs(bed, cohort))
        assert found == [], found
        assert not (bed.workdir / "raw-media").exists()
        record_result("security", "no raw media written with debug.save_raw_media = false",
                      "no video/audio/image file under the state dirs, the daemon's TMPDIR, /tmp or /dev/shm",
                      f"scanned {len(roots)} roots (suffix + magic bytes): 0 media files", True)
    finally:
        if daemon is not None:
            daemon.kill()
        bed.stop()
        station.close()


@pytest.mark.slow
def test_raw_media_only_where_configured_with_debug_on(cohort: Path, model_dir: Path, broker_factory,
                                                       subscriber_factory, record_result, tmp_path: Path) -> None:
    from appliance.devtools.simulate import SimulatedBed

    broker = broker_factory()
    sub = subscriber_factory(broker.port, [f"{PREFIX}/#"])
    started = time.time() - 1.0
    bed = SimulatedBed(cohort, workdir=tmp_path / "bed").start()
    daemon = None
    try:
        config = _daemon_config(bed, tmp_path, model_dir, {"port": broker.port}, debug={"save_raw_media": True})
        daemon = DaemonProcess(config, tmp_path / "daemon.log", daemon_env(bed, tmp_path)).start()
        raw_dir = bed.workdir / "raw-media"  # outbox folder / raw-media (appliance/daemon.py)
        assert wait_until(lambda: daemon.proc.poll() is None and len(list(raw_dir.glob("*.npz"))) >= 2, 120), \
            daemon.text()[-3000:]
        assert daemon.terminate() == 0, daemon.text()[-3000:]
    finally:
        if daemon is not None:
            daemon.kill()
        bed.stop()
    found = media_files(scan_roots(tmp_path), started, exclude=bed_inputs(bed, cohort))
    outside = [p for p in found if raw_dir.resolve() not in p.resolve().parents]
    assert found and outside == [], outside
    largest = max(len(m.payload) for m in sub.messages)
    assert largest < 4096
    record_result("security", "raw media with debug.save_raw_media = true",
                  "files only in <outbox folder>/raw-media on the device; MQTT unchanged",
                  f"{len(found)} files, all in {raw_dir.name}/; 0 elsewhere; largest MQTT payload {largest} B", True)


# ------------------------------------------------------------------------------------ permissions at start
def _run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "appliance.daemon", "--config", str(config)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_daemon_refuses_exposed_secrets_and_writable_config(tmp_path: Path, record_result) -> None:
    """Real files, real chmod, the real daemon process: exit 2 with one line naming the key and the mode."""
    secret = tmp_path / "mqtt.pw"
    secret.write_text("pw\n")
    key = tmp_path / "client.key"
    key.write_text("KEY\n")
    (tmp_path / "ca.pem").write_text("CA\n")
    (tmp_path / "client.crt").write_text("CERT\n")
    cal_key = tmp_path / "calibration.key"
    cal_key.write_text("00" * 32 + "\n")
    config = tmp_path / "appliance.toml"
    config.write_text(
        '[device]\nid = "d"\nsite = "s"\nbed = "b"\n[camera]\nenabled = false\n[microphone]\nenabled = false\n'
        '[mqtt]\nusername = "bed"\npassword_file = "mqtt.pw"\ntls_ca_file = "ca.pem"\ntls_cert_file = "client.crt"\n'
        'tls_key_file = "client.key"\n[calibration]\nbundle = ""\nkey_file = "calibration.key"\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    cases = [  # (file, mode, key named in the error, word in the error)
        (secret, 0o640, "mqtt.password_file", "group or others"),
        (secret, 0o604, "mqtt.password_file", "group or others"),
        (key, 0o640, "mqtt.tls_key_file", "group or others"),
        (cal_key, 0o644, "calibration.key_file", "group or others"),
        (config, 0o666, None, "writable by others"),
    ]
    observed = []
    for path in (secret, key, cal_key):
        path.chmod(0o600)
    for path, mode, key_name, word in cases:
        config.chmod(0o644)
        path.chmod(mode)
        result = _run_daemon(config)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, result.stderr[-2000:]
        assert len(lines) == 1 and word in lines[0] and (key_name is None or key_name in lines[0]), lines
        assert f"{mode:04o}" in lines[0]
        observed.append(f"{path.name} {mode:04o}: exit {result.returncode}")
        path.chmod(0o600 if path is not config else 0o644)
    assert check_config(config).calibration.key_file.endswith("calibration.key")  # fixed modes: accepted
    record_result("security", "secrets readable by group/others, config writable by others",
                  "daemon refuses to start: exit 2, one line naming the key and the mode",
                  "; ".join(observed) + "; 0600 secrets + 0644 config accepted", True)


def test_systemd_credentials_are_not_mode_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  record_result) -> None:
    """``$CREDENTIALS_DIRECTORY`` is private to the unit (systemd), so its files' modes are not ours to check,
    while the same secret as a plain file with mode 0640 is refused."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("pw\n")
    (creds / "mqtt-password").chmod(0o640)
    config = tmp_path / "appliance.toml"
    config.write_text('[device]\nid = "d"\n[mqtt]\nusername = "bed"\npassword_file = "pw"\n'
                      '[calibration]\nbundle = ""\n')
    (tmp_path / "pw").write_text("pw\n")
    (tmp_path / "pw").chmod(0o640)
    with pytest.raises(ConfigError, match="group or others"):
        check_config(config)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert check_config(config).mqtt.username == "bed"
    record_result("security", "systemd credential vs plain secret file",
                  "a 0640 plain file is refused; $CREDENTIALS_DIRECTORY (private to the unit) is used as is",
                  "plain 0640 file: ConfigError naming group/others; credential 0640: accepted", True)


# ------------------------------------------------------------------------------- command authentication
KEY = bytes(range(32))


def test_command_guard_without_key_checks_envelope_when_present(record_result) -> None:
    guard = messages.CommandGuard(bed=BED)
    topic = f"{PREFIX}/cmd/calibration/start"
    plain = guard.check("calibration/start", b'{"infant": "I1"}', topic=topic)
    assert plain.args == {"infant": "I1"} and plain.command_id is None
    enveloped = guard.check("calibration/start", json.dumps(
        {"infant": "I2", "command_id": "a", "sent_utc": now_utc(), "bed": BED}).encode(), topic=topic)
    assert enveloped.args == {"infant": "I2"} and enveloped.command_id == "a"  # envelope stripped from args
    with pytest.raises(messages.CommandError) as err:
        guard.check("calibration/start", json.dumps({"infant": "I3", "command_id": "a"}).encode(), topic=topic)
    assert err.value.kind == "replayed" and "command_id" in str(err.value)
    for body, kind, word in [
        ({"command_id": "b", "sent_utc": now_utc(+600)}, "stale", "sent_utc"),
        ({"sent_utc": "yesterday"}, "malformed", "sent_utc"),
        ({"sent_utc": "2024-01-01T00:00:00"}, "malformed", "sent_utc"),
        ({"bed": OTHER}, "malformed", "bed"),
        ({"hmac": "zz"}, "malformed", "hmac"),
        ({"nips": float("nan")}, "malformed", "JSON"),
    ]:
        with pytest.raises(messages.CommandError) as err:
            guard.check("calibration/rate", json.dumps(body).encode(), topic=topic)
        assert err.value.kind == kind and word in str(err.value), (body, err.value)
    with pytest.raises(messages.CommandError, match="exceeds"):
        guard.check("calibration/rate", b" " * (messages.MAX_COMMAND_BYTES + 1), topic=topic)
    record_result("security", "command envelope without a station key",
                  "optional command_id/sent_utc/bed checked when present; stripped from the handler's arguments",
                  "replay -> replayed; +600 s / bad / naive sent_utc -> stale/malformed; other bed, bad hmac, NaN, "
                  f"> {messages.MAX_COMMAND_BYTES} B -> malformed (each names its field)", True)


def test_command_guard_with_station_key_requires_a_valid_hmac(record_result) -> None:
    guard = messages.CommandGuard(bed=BED, key=KEY)
    topic = f"{PREFIX}/cmd/calibration/rate"
    signed = messages.sign_command(topic, {"nips": 3, "rater": "RN1"}, KEY, bed=BED)
    assert guard.check("calibration/rate", signed, topic=topic).args == {"nips": 3, "rater": "RN1"}
    with pytest.raises(messages.CommandError) as err:  # the very same bytes again
        guard.check("calibration/rate", signed, topic=topic)
    assert err.value.kind == "replayed"

    def refused(payload: bytes, at: str = topic) -> messages.CommandError:
        with pytest.raises(messages.CommandError) as info:
            guard.check(at.rsplit("/cmd/", 1)[1], payload, topic=at)
        return info.value

    tampered = json.loads(messages.sign_command(topic, {"nips": 3, "rater": "RN1"}, KEY))
    tampered["nips"] = 7
    assert refused(json.dumps(tampered).encode()).kind == "unauthenticated"
    other_bed = f"neopain/{SITE}/{OTHER}/cmd/calibration/rate"  # signed for bed-13, replayed to bed-12
    moved = messages.sign_command(other_bed, {"nips": 1, "rater": "RN1"}, KEY)
    assert refused(moved).kind == "unauthenticated"
    forged = messages.sign_command(topic, {"nips": 1, "rater": "RN1"}, b"k" * 32)
    assert "hmac" in str(refused(forged))
    unsigned = json.dumps({"nips": 1, "rater": "RN1", "command_id": "u1", "sent_utc": now_utc()}).encode()
    err = refused(unsigned)
    assert err.kind == "unauthenticated" and "hmac: required" in str(err)
    assert refused(b"").kind == "unauthenticated"  # an empty payload is no exception
    with pytest.raises(ValueError, match="at least 16"):
        messages.CommandGuard(key=b"short")
    record_result("security", "commands with a station key (HMAC-SHA256 over topic + canonical JSON)",
                  "only signed, fresh, first-seen commands for this bed's topic are executed",
                  "valid: accepted; same bytes again: replayed; tampered arg, signed for bed-13, wrong key, unsigned, "
                  "empty: unauthenticated", True)


def test_station_key_from_config_reaches_the_publisher(broker_factory, tmp_path: Path, record_result) -> None:
    """``mqtt.command_key_file`` (0600 hex) -> check_config -> the daemon's PublisherConfig -> a real Publisher on
    a real broker: only the signed command reaches the handler."""
    from appliance.config import command_key
    from appliance.wiring import publisher_config
    from appliance.mqtt.publisher import ConnectionState, Publisher

    broker = broker_factory()
    key_file = tmp_path / "station.key"
    key_file.write_text(KEY.hex() + "\n")
    config_path = tmp_path / "appliance.toml"
    config_path.write_text(
        f'[device]\nid = "d12"\nsite = "{SITE}"\nbed = "{BED}"\n'
        '[camera]\nenabled = false\n[microphone]\nenabled = false\n'
        f'[mqtt]\nport = {broker.port}\ncommand_key_file = "station.key"\n[calibration]\nbundle = ""\n'
        f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    for mode, word in ((0o644, "group or others"), (0o640, "group or others")):
        key_file.chmod(mode)
        with pytest.raises(ConfigError, match=word) as err:
            check_config(config_path)
        assert err.value.key == "mqtt.command_key_file"
    key_file.chmod(0o600)
    key_file.write_text("not hex\n")
    with pytest.raises(ConfigError, match="hex text of at least 16 bytes"):
        check_config(config_path)
    key_file.write_text(KEY.hex() + "\n")
    config = check_config(config_path)
    assert command_key(config) == KEY and KEY.hex() not in repr(config)

    got: list[messages.Command] = []
    pub = Publisher(publisher_config(config), on_command=got.append)
    assert KEY.hex() not in repr(pub.config)
    pub.start()
    try:
        assert pub.wait_for(lambda p: p.state is ConnectionState.CONNECTED, 10), pub.last_error
        time.sleep(0.3)  # SUBACK for cmd/#
        send = publish_raw
        topic = f"{PREFIX}/cmd/calibration/start"
        signed = messages.sign_command(topic, {"infant": "I07"}, KEY, bed=BED)
        send(broker.port, topic, signed)
        send(broker.port, topic, signed)  # replay
        send(broker.port, topic, b'{"infant": "I08"}')  # unsigned
        send(broker.port, topic, messages.sign_command(f"neopain/{SITE}/{OTHER}/cmd/calibration/start",
                                                       {"infant": "I09"}, KEY))  # another bed's command
        send(broker.port, topic, messages.sign_command(topic, {"infant": "I10"}, b"x" * 32))  # wrong key
        assert pub.wait_for(lambda p: p.stats().commands_ok + p.stats().commands_malformed >= 5, 10)
        stats = pub.stats()
    finally:
        pub.stop()
    assert [(c.name, c.args) for c in got] == [("calibration/start", {"infant": "I07"})]
    assert (stats.commands_ok, stats.commands_malformed) == (1, 4)
    record_result("security", "station key configured (mqtt.command_key_file) through a real broker",
                  "key file 0644/0640 or not hex refused at start; only the signed, fresh, first-seen command runs",
                  f"5 commands sent: {stats.commands_ok} executed, {stats.commands_malformed} refused "
                  "(replay, unsigned, other bed's signature, wrong key)", True)
