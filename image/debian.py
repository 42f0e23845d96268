#!/usr/bin/env python3
"""Stage the neopain Debian package tree for ``dpkg-deb`` (called by ``image/build_deb.sh``).

Why a Python helper: the package layout, modes, the control file's ``Installed-Size`` and the version read
from ``setup.py`` are easier to get right (and to test) here than in shell. The shell script keeps the
steps a release engineer reads: build the wheel, stage, ``dpkg-deb --build``.

Layout of the package (what ``stage`` writes under the tree; modes are explicit, owners are root via
``dpkg-deb --root-owner-group``)::

    opt/neopain/wheels/*.whl            neopain wheel (+ dependency wheels from --wheelhouse); postinst
                                        builds /opt/neopain/venv from them
    opt/neopain/models/                 exported ONNX models (--model-dir) or empty
    opt/neopain/image/jetpack.{py,toml} the pinned JetPack manifest and its on-device check
    opt/neopain/README.md               the units' Documentation=
    lib/systemd/system/*.service        from systemd/
    lib/udev/rules.d/99-neopain.rules   stable device names
    etc/neopain/appliance.toml          default config (conffile)
    DEBIAN/{control,conffiles,postinst,prerm,postrm}
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
from pathlib import Path

IMAGE_DIR = Path(__file__).resolve().parent
REPO = IMAGE_DIR.parent
PACKAGE = "neopain"
PREFIX = Path("opt/neopain")
UNITS = ("neopain.service", "neopain-engines.service")
CONFFILES = ("/etc/neopain/appliance.toml",)
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
# Only what the device needs at run time: the interpreter and venv module the postinst uses, the C
# libraries behind pyalsaaudio and systemd-python, adduser for the system user, systemd and udev for the
# units and rules. The platform's python3 (JetPack 6 / jammy: 3.10), not a second interpreter: NVIDIA's
# TensorRT bindings (python3-libnvinfer) and Jetson torch wheels exist for it only. python3-tomli lets that
# python3 run image/jetpack.py outside the venv (tomllib is standard only from 3.11).
DEPENDS = ("python3 (>= 3.10)", "python3-venv", "python3-tomli", "libasound2", "libsystemd0", "adduser", "systemd",
           "udev")
# Installed by apt unless declined: without the TensorRT bindings the daemon runs on ONNX Runtime.
RECOMMENDS = ("python3-libnvinfer",)
#: The interpreter the venv is built with and the CPython tag its wheels must fit (see jetpack.toml [python]).
PYTHON = "python3"
PYTHON_TAG = "cp310"
#: Debian architecture -> the wheel platform tag it runs (besides pure-Python "any").
WHEEL_PLATFORMS = {"arm64": "aarch64", "amd64": "x86_64"}
DESCRIPTION = """Bedside newborn pain estimation (NIPS) appliance
 Estimates a newborn's pain continuously from face video, cry audio and the
 patient monitor's vitals, and publishes calibrated NIPS scores over MQTT.
 Installs the daemon's wheels (venv built at configure time), its systemd
 units, udev rules for the camera, microphone and monitor adapter, and the
 default configuration in /etc/neopain."""


class PackagingError(RuntimeError):
    """A packaging input is missing or malformed (the message names the file or value)."""


def project_version(setup_py: Path = REPO / "setup.py") -> str:
    """The ``version=`` literal passed to ``setup()`` (read with ``ast``: running setup.py is not needed)."""
    tree = ast.parse(setup_py.read_text(), filename=str(setup_py))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for kw in node.keywords:
                if kw.arg == "version" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    return kw.value.value
    raise PackagingError(f"{setup_py}: no literal version= in setup()")


def render_control(version: str, arch: str, installed_size_kib: int) -> str:
    """DEBIAN/control for ``version`` / ``arch``."""
    if not version or not version[0].isdigit():
        raise PackagingError(f"version must start with a digit (Debian policy), got {version!r}")
    return (f"Package: {PACKAGE}\nVersion: {version}\nArchitecture: {arch}\n"
            f"Maintainer: neopain appliance team <neopain@localhost>\nSection: misc\nPriority: optional\n"
            f"Installed-Size: {installed_size_kib}\nDepends: {', '.join(DEPENDS)}\n"
            f"Recommends: {', '.join(RECOMMENDS)}\n"
            f"Description: {DESCRIPTION}\n")


def check_wheel(name: str, arch: str, python_tag: str = PYTHON_TAG) -> None:
    """Refuse a wheel the device's interpreter cannot install (PEP 427 file name tags).

    Why here: a cp311 or x86_64 wheel in the wheelhouse builds a fine .deb, and only the device's postinst
    fails (``pip install --no-index``), after flashing. Accepted: ``py3``/``py3X``/``cp310`` with ``none`` or
    ``abi3`` (``cp3X-abi3`` for X <= 10), on ``any`` or a ``manylinux``/``linux`` tag of ``arch``'s machine."""
    parts = name[:-len(".whl")].split("-") if name.endswith(".whl") else []
    if len(parts) not in (5, 6):
        raise PackagingError(f"not a wheel file name (name-version-python-abi-platform.whl): {name}")
    pythons, abis, platforms = (set(tag.split(".")) for tag in parts[-3:])
    minor = int(python_tag[3:])
    abi3_ok = {f"cp3{m}" for m in range(2, minor + 1)}
    if not (pythons & {"py3", f"py3{minor}", python_tag} and abis & {"none", python_tag}
            or pythons & abi3_ok and "abi3" in abis):
        raise PackagingError(f"{name}: python/abi tags {parts[-3]}-{parts[-2]} do not install on the device's "
                             f"{python_tag} (JetPack 6's python3; see image/jetpack.toml [python])")
    machine = WHEEL_PLATFORMS.get(arch)
    if "any" not in platforms and not (machine and any(p.endswith(machine) for p in platforms)):
        raise PackagingError(f"{name}: platform tag {parts[-1]} is not for {arch} ({machine or 'unknown machine'})")


def _install(src: Path, dst: Path, mode: int) -> None:
    if not src.is_file():
        raise PackagingError(f"missing packaging input: {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def _installed_size_kib(tree: Path) -> int:
    """Sum of file sizes in KiB, as dpkg-gencontrol computes it (1 KiB per file at least)."""
    return sum(max(1, -(-p.stat().st_size // 1024)) for p in tree.rglob("*")
               if p.is_file() and "DEBIAN" not in p.relative_to(tree).parts)


def stage(tree: Path, wheels: list[Path], *, arch: str, model_dir: Path | None = None,
          python: str = PYTHON, repo: Path = REPO) -> str:
    """Write the package tree under ``tree`` (must not exist); returns the version packaged."""
    version = project_version(repo / "setup.py")
    if tree.exists():
        raise PackagingError(f"staging folder already exists: {tree}")
    if not any(w.name.startswith(f"{PACKAGE}-{version}-") and w.suffix == ".whl" for w in wheels):
        raise PackagingError(f"no {PACKAGE}-{version}-*.whl among the wheels: {[w.name for w in wheels]}")
    for wheel in wheels:
        check_wheel(wheel.name, arch)
    opt = tree / PREFIX
    for wheel in wheels:
        _install(wheel, opt / "wheels" / wheel.name, 0o644)
    (opt / "models").mkdir(parents=True)
    if model_dir is not None:
        if not model_dir.is_dir():
            raise PackagingError(f"--model-dir is not a folder: {model_dir}")
        for src in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            _install(src, opt / "models" / src.relative_to(model_dir), 0o644)
    _install(repo / "README.md", opt / "README.md", 0o644)
    _install(IMAGE_DIR / "jetpack.py", opt / "image" / "jetpack.py", 0o755)
    _install(IMAGE_DIR / "jetpack.toml", opt / "image" / "jetpack.toml", 0o644)
    for unit in UNITS:
        _install(repo / "systemd" / unit, tree / "lib/systemd/system" / unit, 0o644)
    _install(IMAGE_DIR / "udev" / "99-neopain.rules", tree / "lib/udev/rules.d/99-neopain.rules", 0o644)
    _install(repo / "systemd" / "appliance.toml", tree / "etc/neopain/appliance.toml", 0o644)

    debian = tree / "DEBIAN"
    debian.mkdir()
    for name in MAINTAINER_SCRIPTS:
        text = (IMAGE_DIR / "debian" / name).read_text()
        text = text.replace("@VERSION@", version).replace("@PYTHON@", python)
        (debian / name).write_text(text)
        (debian / name).chmod(0o755)
    (debian / "conffiles").write_text("".join(f"{c}\n" for c in CONFFILES))
    (debian / "control").write_text(render_control(version, arch, _installed_size_kib(tree)))
    for path in [tree, *tree.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        elif path.parent.name != "DEBIAN" and path.name != "jetpack.py":
            path.chmod(0o644)
    (debian / "conffiles").chmod(0o644)
    (debian / "control").chmod(0o644)
    return version


def copy_source(dst: Path, repo: Path = REPO) -> None:
    """Copy what ``pip wheel`` needs (setup.py, README, the top-level packages) to ``dst``.

    Why: building in a copy leaves no ``build/`` or ``*.egg-info`` behind in the checkout and lets two
    builds run at once."""
    from setuptools import find_packages

    dst.mkdir(parents=True)
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"):
        if (repo / name).is_file():
            shutil.copy2(repo / name, dst / name)
    tops = {p.split(".")[0] for p in find_packages(where=str(repo))} - {"tests", "image"}
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for top in sorted(tops):
        shutil.copytree(repo / top, dst / top, ignore=ignore)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="neopain Debian packaging helper")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_ver = sub.add_parser("version", help="print the version from setup.py")
    p_ver.add_argument("--repo", type=Path, default=REPO)
    p_src = sub.add_parser("copy-source", help="copy the buildable source tree to DST")
    p_src.add_argument("dst", type=Path)
    p_stage = sub.add_parser("stage", help="write the package tree")
    p_stage.add_argument("tree", type=Path)
    p_stage.add_argument("--wheel", type=Path, action="append", default=[], required=True)
    p_stage.add_argument("--arch", required=True)
    p_stage.add_argument("--model-dir", type=Path)
    p_stage.add_argument("--python", default=PYTHON)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "version":
            print(project_version(args.repo / "setup.py"))
        elif args.cmd == "copy-source":
            copy_source(args.dst)
        else:
            print(stage(args.tree, args.wheel, arch=args.arch, model_dir=args.model_dir, python=args.python))
    except PackagingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
