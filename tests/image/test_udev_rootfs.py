"""The udev rules (syntax and the three stable names) and staging the first-boot step into a rootfs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "image/udev/99-neopain.rules"
ITEM = re.compile(r'^(?P<key>[A-Z_]+)(\{(?P<attr>[^}]+)\})?(?P<op>==|!=|\+=|-=|:=|=)"(?P<value>[^"]*)"$')
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "ATTRS", "ENV", "ATTR"}
ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "ATTR", "ENV", "OWNER"}


def parse_rules(text: str) -> list[list[tuple[str, str | None, str, str]]]:
    """Each rule as (key, attr, op, value) items; raises ValueError naming the line and item on bad syntax."""
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        items = []
        for raw in (part.strip() for part in line.split(", ")):
            match = ITEM.match(raw)
            if not match:
                raise ValueError(f"line {number}: not KEY==\"value\": {raw!r}")
            key, attr, op, value = match["key"], match["attr"], match["op"], match["value"]
            if op in ("==", "!=") and key not in MATCH_KEYS:
                raise ValueError(f"line {number}: {key} is not a match key")
            if op not in ("==", "!=") and key not in ASSIGN_KEYS:
                raise ValueError(f"line {number}: {key} cannot be assigned")
            items.append((key, attr, op, value))
        rules.append(items)
    return rules


def test_rules_parse() -> None:
    if shutil.which("udevadm"):
        result = subprocess.run(["udevadm", "verify", str(RULES)], capture_output=True, text=True, timeout=30)
        if "Unknown command" not in result.stderr and "verify" not in result.stderr[:40]:
            assert result.returncode == 0, result.stdout + result.stderr
    assert len(parse_rules(RULES.read_text())) >= 3


def test_parser_rejects_broken_rules() -> None:
    with pytest.raises(ValueError, match="line 1"):
        parse_rules('SUBSYSTEM=="tty", SYMLINK+=neopain-monitor')
    with pytest.raises(ValueError, match="SYMLINK is not a match key"):
        parse_rules('SYMLINK=="x"')


def test_three_stable_names() -> None:
    rules = parse_rules(RULES.read_text())
    def with_(item: tuple) -> list:
        return [r for r in rules if item in r]
    camera = with_(("SYMLINK", None, "+=", "neopain-camera"))
    assert len(camera) == 1 and ("SUBSYSTEM", None, "==", "video4linux") in camera[0]
    mic = with_(("ATTR", "id", "=", "neopain-mic"))
    assert len(mic) == 1 and ("SUBSYSTEM", None, "==", "sound") in mic[0]
    assert len("neopain-mic") <= 15  # ALSA card ids are at most 15 characters
    monitor = with_(("SYMLINK", None, "+=", "neopain-monitor"))
    vendors = {dict(((k, a), v) for k, a, _, v in r)[("ATTRS", "idVendor")] for r in monitor}
    assert vendors == {"0403", "067b", "10c4"}  # FTDI, Prolific, Silicon Labs CP210x
    assert all(("GROUP", None, "=", "dialout") in r and ("SUBSYSTEM", None, "==", "tty") in r for r in monitor)


def test_stage_rootfs_places_the_firstboot_step(tmp_path: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed")
    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text("Package: neopain\nVersion: 0.0.1\nArchitecture: all\n"
                                        "Maintainer: t <t@localhost>\nDescription: t\n")
    deb = tmp_path / "neopain_0.0.1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)], check=True,
                   capture_output=True, timeout=60)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    result = subprocess.run(["bash", str(REPO / "image/stage_rootfs.sh"), str(rootfs), str(deb)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    staged = rootfs / "var/lib/neopain-firstboot" / deb.name
    assert staged.is_file() and result.stdout.strip() == str(staged)
    unit = rootfs / "etc/systemd/system/neopain-firstboot.service"
    link = rootfs / "etc/systemd/system/multi-user.target.wants/neopain-firstboot.service"
    assert unit.is_file() and link.is_symlink() and link.resolve() == unit.resolve()
    script = rootfs / "usr/local/sbin/neopain-firstboot"
    assert script.stat().st_mode & 0o111
    text = unit.read_text()
    assert "ConditionPathExists=!/var/lib/neopain-firstboot/done" in text and "Type=oneshot" in text
    body = script.read_text()
    assert "dpkg -i" in body and "build-engines" in body and body.index("dpkg -i") < body.index('touch "$STAMP"')


def test_stage_rootfs_refuses_a_foreign_file(tmp_path: Path) -> None:
    bogus = tmp_path / "neopain_1_all.deb"
    bogus.write_text("not a package")
    (tmp_path / "rootfs").mkdir()
    result = subprocess.run(["bash", str(REPO / "image/stage_rootfs.sh"), str(tmp_path / "rootfs"), str(bogus)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not a Debian package" in result.stderr
