"""The .deb: builds offline with image/build_deb.sh, has the right files and modes, clean maintainer
scripts and units, and installs into (and purges from) a throwaway root with dpkg --root."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from image import debian

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "image"
needs = {tool: pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} not installed")
         for tool in ("dpkg-deb", "dpkg", "systemd-analyze", "shellcheck")}
pytestmark = needs["dpkg-deb"]


def run(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    models = tmp_path_factory.mktemp("models")
    (models / "manifest.json").write_text('{"parts": []}\n')
    result = run("bash", str(IMAGE / "build_deb.sh"), "--out", str(out), "--model-dir", str(models))
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.parent == out
    return path


def _fsys(deb: Path) -> io.BytesIO:
    """The package's data archive (what dpkg-deb -c lists) as a tar stream."""
    return io.BytesIO(subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                                     check=True, timeout=60).stdout)


@pytest.fixture(scope="module")
def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=_fsys(deb)) as tar:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tar.getmembers() if m.name != "./"}


@pytest.fixture(scope="module")
def control_dir(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("control")
    subprocess.run(["dpkg-deb", "--control", str(deb), str(out / "DEBIAN")], check=True)
    return out / "DEBIAN"


def field(deb: Path, name: str) -> str:
    return run("dpkg-deb", "--field", str(deb), name).stdout.strip()


def test_name_version_and_arch_come_from_setup_py(deb: Path) -> None:
    version = debian.project_version(REPO / "setup.py")
    assert field(deb, "Package") == "neopain" and field(deb, "Version") == version
    assert deb.name == f"neopain_{version}_{field(deb, 'Architecture')}.deb"
    depends = {d.strip() for d in field(deb, "Depends").split(",")}
    # The platform's python3 (JetPack 6: 3.10), the one NVIDIA's TensorRT bindings are built for.
    assert {"python3 (>= 3.10)", "python3-venv", "python3-tomli", "libasound2", "libsystemd0", "adduser"} <= depends
    assert not {d for d in depends if re.match(r"python3\.\d+", d)}, "no second interpreter (see image/README.md)"
    assert field(deb, "Recommends") == "python3-libnvinfer"
    assert not {d for d in depends if d.startswith(("mosquitto", "python3-dev", "libasound2-dev"))}


def test_files_and_modes(members: dict[str, tarfile.TarInfo]) -> None:
    version = debian.project_version(REPO / "setup.py")
    expect = {
        "etc/neopain/appliance.toml": 0o644,
        "lib/systemd/system/neopain.service": 0o644,
        "lib/systemd/system/neopain-engines.service": 0o644,
        "lib/udev/rules.d/99-neopain.rules": 0o644,
        f"opt/neopain/wheels/neopain-{version}-py3-none-any.whl": 0o644,
        "opt/neopain/models/manifest.json": 0o644,
        "opt/neopain/image/jetpack.py": 0o755,
        "opt/neopain/image/jetpack.toml": 0o644,
        "opt/neopain/README.md": 0o644,
    }
    for name, mode in expect.items():
        assert name in members, f"{name} missing from the package"
        assert members[name].mode & 0o7777 == mode, f"{name}: mode {oct(members[name].mode)}"
    assert all(m.uname == "root" and m.gname == "root" for m in members.values())
    # Secrets are made by postinst (never shipped: dpkg would own, and a purge-less upgrade overwrite, them).
    assert not any("secrets" in name for name in members)
    assert all(not m.isdir() or m.mode & 0o7777 == 0o755 for m in members.values())


def test_shipped_config_is_the_documented_default(members: dict[str, tarfile.TarInfo], deb: Path) -> None:
    with tarfile.open(fileobj=_fsys(deb)) as tar:
        text = tar.extractfile("./etc/neopain/appliance.toml").read().decode()  # type: ignore[union-attr]
    assert text == (REPO / "systemd/appliance.toml").read_text()


def test_control_files(control_dir: Path) -> None:
    assert (control_dir / "conffiles").read_text().split() == ["/etc/neopain/appliance.toml"]
    for name in ("postinst", "prerm", "postrm"):
        script = control_dir / name
        assert script.stat().st_mode & 0o777 == 0o755, name
        text = script.read_text()
        assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
        assert "@VERSION@" not in text and "@PYTHON@" not in text
    postinst = (control_dir / "postinst").read_text()
    assert "adduser --system" in postinst and re.search(r"for group in video audio dialout", postinst)
    assert f'VERSION="{debian.project_version(REPO / "setup.py")}"' in postinst and '"neopain==$VERSION"' in postinst
    # The venv: the platform's python3, with JetPack's apt packages (python3-libnvinfer) visible in it.
    assert 'PYTHON="python3"\n' in postinst
    assert re.search(r'"\$PYTHON" -m venv --system-site-packages "\$PREFIX/venv"', postinst)
    assert 'import tensorrt' in postinst


@pytest.mark.parametrize("name", [
    "neopain-0.1.0-py3-none-any.whl",
    "torch-2.5.0a0+872d972e41.nv24.08-cp310-cp310-linux_aarch64.whl",  # NVIDIA's JetPack 6 torch wheel
    "numpy-2.2.6-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
    "cryptography-44.0.0-cp39-abi3-manylinux_2_28_aarch64.whl",
    "six-1.17.0-py2.py3-none-any.whl",
])
def test_wheels_for_the_device_python_are_accepted(name: str) -> None:
    debian.check_wheel(name, "arm64")


@pytest.mark.parametrize("name, why", [
    ("torch-2.5.0-cp311-cp311-linux_aarch64.whl", "do not install on the device's cp310"),
    ("foo-1.0-cp312-abi3-manylinux_2_28_aarch64.whl", "do not install on the device's cp310"),
    ("numpy-2.2.6-cp310-cp310-manylinux_2_17_x86_64.whl", "is not for arm64"),
    ("wheelhouse-README.whl", "not a wheel file name"),
])
def test_wheels_the_device_cannot_install_are_refused(name: str, why: str) -> None:
    with pytest.raises(debian.PackagingError, match=why):
        debian.check_wheel(name, "arm64")


def test_build_refuses_a_cp311_wheelhouse(tmp_path: Path) -> None:
    """A wheelhouse prepared for the wrong Python fails the build, not the device's postinst after flashing."""
    house = tmp_path / "wheelhouse"
    house.mkdir()
    (house / "torch-2.5.0-cp311-cp311-linux_aarch64.whl").write_bytes(b"PK\x05\x06" + bytes(18))
    out = tmp_path / "out"
    result = run("bash", str(IMAGE / "build_deb.sh"), "--out", str(out), "--wheelhouse", str(house))
    assert result.returncode == 2 and "cp311-cp311 do not install on the device's cp310" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_maintainer_scripts_pass_bash_n(control_dir: Path) -> None:
    scripts = [control_dir / n for n in ("postinst", "prerm", "postrm")]
    scripts += [IMAGE / "build_deb.sh", IMAGE / "stage_rootfs.sh", IMAGE / "rootfs-overlay/usr/local/sbin/neopain-firstboot"]
    for script in scripts:
        result = run("bash", "-n", str(script))
        assert result.returncode == 0 and result.stderr == "", f"{script.name}: {result.stderr}"


def test_bash_n_would_catch_a_syntax_error(tmp_path: Path) -> None:
    broken = tmp_path / "postinst"
    broken.write_text((IMAGE / "debian/postinst").read_text().replace("esac\nexit 0", "exit 0"))
    assert run("bash", "-n", str(broken)).returncode != 0


@needs["shellcheck"]
def test_shellcheck(control_dir: Path) -> None:
    scripts = [control_dir / n for n in ("postinst", "prerm", "postrm")]
    scripts += [IMAGE / "build_deb.sh", IMAGE / "stage_rootfs.sh", IMAGE / "rootfs-overlay/usr/local/sbin/neopain-firstboot"]
    result = run("shellcheck", "-s", "bash", *map(str, scripts))
    assert result.returncode == 0, result.stdout


def _verify_units(units: list[Path], tmp_path: Path) -> list[str]:
    """systemd-analyze verify on copies whose ExecStart binaries point at an existing executable (verify
    checks that it exists; /opt/neopain/venv is only made on the device). Nothing else changes."""
    fake = tmp_path / "fake-exec"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    copies = []
    for unit in units:
        text = unit.read_text()
        text = text.replace("/opt/neopain/venv/bin/neopain", str(fake))
        text = text.replace("/usr/local/sbin/neopain-firstboot", str(fake))
        copy = tmp_path / unit.name
        copy.write_text(text)
        copies.append(copy)
    result = run("systemd-analyze", "verify", *map(str, copies))
    assert result.returncode == 0
    return (result.stdout + result.stderr).splitlines()


@pytest.fixture(scope="module")
def installed_root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    dpkg_install(root, deb)
    return root


def dpkg_admin(root: Path) -> None:
    for sub in ("info", "updates", "triggers", "alternatives"):
        (root / "var/lib/dpkg" / sub).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """dpkg on a throwaway root: maintainer scripts run outside a chroot with DPKG_ROOT=root (the scripts
    honour it), so this works as an ordinary user and touches nothing outside ``root``."""
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg not installed")
    dpkg_admin(root)
    return run("dpkg", f"--root={root}", "--force-script-chrootless", "--force-not-root", "--force-depends",
               "--force-architecture", "--force-confold", *args)


def dpkg_install(root: Path, deb: Path) -> None:
    result = dpkg(root, "-i", str(deb))
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_into_a_throwaway_root_puts_every_file_in_place(installed_root: Path,
                                                                members: dict[str, tarfile.TarInfo]) -> None:
    for name, member in members.items():
        path = installed_root / name
        assert path.exists(), f"{name} not installed"
        if member.isfile():
            assert path.stat().st_mode & 0o7777 == member.mode & 0o7777, name
    secrets = installed_root / "etc/neopain/secrets"
    assert secrets.stat().st_mode & 0o7777 == 0o700
    for name in ("mqtt-password", "mqtt-tls-key"):  # the LoadCredential= sources of neopain.service
        assert (secrets / name).stat().st_mode & 0o7777 == 0o600 and (secrets / name).stat().st_size == 0
        assert f"/etc/neopain/secrets/{name}" in (installed_root / "lib/systemd/system/neopain.service").read_text()
    status = (installed_root / "var/lib/dpkg/status").read_text()
    assert "Package: neopain\nStatus: install ok installed" in status
    assert " /etc/neopain/appliance.toml " in status  # registered as a conffile


def test_units_are_enabled_in_the_root(installed_root: Path) -> None:
    if shutil.which("systemctl") is None:
        pytest.skip("systemctl not installed")
    wants = installed_root / "etc/systemd/system/multi-user.target.wants"
    assert {p.name for p in wants.iterdir()} >= {"neopain.service", "neopain-engines.service"}


@needs["systemd-analyze"]
def test_installed_units_pass_systemd_analyze_verify(installed_root: Path, tmp_path: Path) -> None:
    units = sorted((installed_root / "lib/systemd/system").glob("*.service"))
    units.append(IMAGE / "rootfs-overlay/etc/systemd/system/neopain-firstboot.service")
    assert len(units) == 3
    lines = _verify_units(units, tmp_path)
    assert lines == [], "\n".join(lines)


@needs["systemd-analyze"]
def test_verify_would_catch_a_typo(tmp_path: Path) -> None:
    unit = tmp_path / "src" / "neopain-firstboot.service"
    unit.parent.mkdir()
    unit.write_text((IMAGE / "rootfs-overlay/etc/systemd/system/neopain-firstboot.service").read_text()
                    .replace("RemainAfterExit=yes", "RemainAfterExits=yes"))
    assert any("RemainAfterExits" in line for line in _verify_units([unit], tmp_path))


def test_reinstall_keeps_edited_config_and_secrets_then_purge_removes_them(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    dpkg_install(root, deb)
    config = root / "etc/neopain/appliance.toml"
    config.write_text(config.read_text().replace('id = "neopain-0001"', 'id = "bed-7-box"'))
    (root / "etc/neopain/secrets/mqtt-password").write_text("s3cret")
    (root / "opt/neopain/venv/bin").mkdir(parents=True)  # what postinst builds on a device
    dpkg_install(root, deb)
    assert 'id = "bed-7-box"' in config.read_text()
    assert (root / "etc/neopain/secrets/mqtt-password").read_text() == "s3cret"
    result = dpkg(root, "--purge", "neopain")
    assert result.returncode == 0, result.stdout + result.stderr
    for gone in ("etc/neopain", "opt/neopain", "lib/systemd/system/neopain.service",
                 "lib/udev/rules.d/99-neopain.rules"):
        assert not (root / gone).exists(), f"{gone} left after purge"


def test_build_refuses_a_missing_model_dir(tmp_path: Path) -> None:
    result = run("bash", str(IMAGE / "build_deb.sh"), "--out", str(tmp_path), "--model-dir", str(tmp_path / "no"))
    assert result.returncode == 2 and "--model-dir is not a folder" in result.stderr
    assert list(tmp_path.iterdir()) == []
