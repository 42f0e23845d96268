"""The unit files: `systemd-analyze verify` clean (no output at all) and consistent with the config code."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from appliance import config as cfg

SYSTEMD_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNITS = ("neopain.service", "neopain-engines.service")
EXEC = "/opt/neopain/venv/bin/neopain"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (systemd keys such as DeviceAllow= repeat, so no configparser)."""
    out: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out[section][key.strip()].append(value.strip())
    return out


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


def copies_with_existing_exec(tmp_path: Path) -> list[Path]:
    """The units with ExecStart's binary pointed at an existing executable: verify checks that it exists,
    and /opt/neopain is not installed here. Nothing else in the files changes."""
    fake = tmp_path / "neopain"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    out = []
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text()
        assert EXEC in text, f"{name} does not start {EXEC}"
        copy = tmp_path / name
        copy.write_text(text.replace(EXEC, str(fake)))
        out.append(copy)
    return out


def verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True,
                          timeout=120)


@needs_analyze
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path) -> None:
    result = verify(copies_with_existing_exec(tmp_path))
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0 and lines == [], "\n".join(lines)


@needs_analyze
def test_verify_check_would_catch_an_unknown_key(tmp_path: Path) -> None:
    """Why the test above looks at output: verify exits 0 on an unknown key but prints a line."""
    paths = copies_with_existing_exec(tmp_path)
    paths[0].write_text(paths[0].read_text().replace("[Service]\n", "[Service]\nWatchDogSec=30\n"))
    result = verify(paths)
    assert "WatchDogSec" in result.stdout + result.stderr


@needs_analyze
def test_security_exposure_is_low(tmp_path: Path) -> None:
    for path in copies_with_existing_exec(tmp_path):
        result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)],
                                capture_output=True, text=True, timeout=120)
        if "--offline" in result.stderr and result.returncode != 0:
            pytest.skip("this systemd-analyze has no offline security analysis (systemd < 250)")
        match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
        assert match, result.stdout + result.stderr
        assert float(match.group(1)) <= 3.0, f"{path.name}: exposure {match.group(1)}"


def test_daemon_unit_is_notify_with_watchdog_and_hardening() -> None:
    unit = parse_unit(SYSTEMD_DIR / "neopain.service")
    svc = unit["Service"]
    assert one(unit, "Service", "Type") == "notify" and one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "ExecStart") == f"{EXEC} run --config {cfg.DEFAULT_CONFIG_PATH}"
    assert one(unit, "Service", "Restart") == "on-failure"
    watchdog_s = int(one(unit, "Service", "WatchdogSec"))
    # Pings every WatchdogSec/2 and only after a scoring cycle: several cycles must fit in one period.
    assert watchdog_s / 2 >= 3 * cfg.ScoringSection().cadence_s
    assert one(unit, "Service", "User") == "neopain"
    for key in ("StateDirectory", "CacheDirectory", "ConfigurationDirectory"):
        assert one(unit, "Service", key) == "neopain"
    assert set(one(unit, "Service", "SupplementaryGroups").split()) == {"video", "audio", "dialout"}
    assert one(unit, "Service", "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in svc["DeviceAllow"]}
    assert {"char-video4linux", "char-alsa", "char-ttyUSB", "char-ttyACM", "char-ttyS"} <= allowed
    assert "PrivateDevices" not in svc, "PrivateDevices would hide camera, ALSA and serial devices"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectControlGroups"):
        assert one(unit, "Service", key) == "yes", key
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    for key in ("After", "Wants"):
        assert {"neopain-engines.service", "network-online.target"} <= set(" ".join(unit["Unit"][key]).split())


def test_credentials_match_the_config_credential_names() -> None:
    unit = parse_unit(SYSTEMD_DIR / "neopain.service")
    loaded = dict(v.split(":", 1) for v in unit["Service"]["LoadCredential"])
    defaults = cfg.MqttSection()
    assert set(loaded) == {defaults.password_credential, defaults.tls_key_credential}
    assert all(p.startswith("/etc/neopain/secrets/") for p in loaded.values())


def test_default_paths_live_in_the_units_writable_directories() -> None:
    """ProtectSystem=strict: the daemon can only write to its State/Cache directories."""
    defaults = cfg.Config()
    assert defaults.outbox.path.startswith("/var/lib/neopain/")  # StateDirectory=neopain
    assert defaults.calibration.bundle.startswith("/var/lib/neopain/")
    assert defaults.scoring.engine_cache_dir.startswith("/var/cache/neopain/")  # CacheDirectory=neopain


def test_engine_unit_is_a_oneshot_before_the_daemon() -> None:
    unit = parse_unit(SYSTEMD_DIR / "neopain-engines.service")
    assert one(unit, "Service", "Type") == "oneshot" and one(unit, "Service", "RemainAfterExit") == "yes"
    assert one(unit, "Service", "ExecStart") == f"{EXEC} build-engines --config {cfg.DEFAULT_CONFIG_PATH}"
    assert one(unit, "Service", "User") == "neopain" and one(unit, "Service", "CacheDirectory") == "neopain"
    assert "neopain.service" in one(unit, "Unit", "Before").split()
