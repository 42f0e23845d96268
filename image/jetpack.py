#!/usr/bin/env python3
"""Compare a device against the pinned JetPack/L4T manifest (``jetpack.toml``).

Why: TensorRT engines and the ONNX parity checks are only valid for the TensorRT/CUDA/L4T release they were
made with. A device that was re-flashed or ``apt upgrade``d onto another release still boots and still runs,
so the mismatch has to be *reported*, not discovered as a subtle accuracy change. This file runs on the
device as a plain script with the platform's ``python3`` (JetPack 6: Ubuntu 22.04's Python 3.10, the same
interpreter the appliance's venv is built on)::

    python3 /opt/neopain/image/jetpack.py [--manifest FILE] [--root /]

Standard library only, plus ``tomli`` below Python 3.11 (``tomllib`` is standard from 3.11): the .deb depends
on ``python3-tomli`` and the venv (``/opt/neopain/venv/bin/python``) has it too.

Exit status: 0 everything matches, 1 a mismatch (each one listed), 2 the manifest is unreadable (or there
is no TOML parser), 3 not a Jetson (no ``/etc/nv_tegra_release``), said plainly rather than reported as
mismatches.
"""

from __future__ import annotations

import argparse
import re
import sys

EXIT_OK, EXIT_MISMATCH, EXIT_BAD_MANIFEST, EXIT_NOT_JETSON = 0, 1, 2, 3

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6's python3): tomli is the library tomllib was made from
    try:
        import tomli as tomllib
    except ModuleNotFoundError:  # say what to do instead of a traceback
        print(f"error: jetpack.py on Python {sys.version.split()[0]} needs tomli to read the manifest "
              f"(apt-get install python3-tomli, or run it with /opt/neopain/venv/bin/python)", file=sys.stderr)
        sys.exit(EXIT_BAD_MANIFEST)

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MANIFEST = Path(__file__).resolve().with_name("jetpack.toml")
TEGRA_RELEASE = Path("etc/nv_tegra_release")
DPKG_STATUS = Path("var/lib/dpkg/status")

_RELEASE_RE = re.compile(r"^#\s*(R\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)")

#: NVIDIA's published JetPack -> Jetson Linux (L4T) pairs for JetPack 6 (sources in jetpack.toml). A manifest
#: whose two versions disagree is refused: bumping one and forgetting the other would pin a release that
#: does not exist.
JETPACK_L4T = {"6.0": ("R36", "3.0"), "6.1": ("R36", "4.0"), "6.2": ("R36", "4.3"), "6.2.1": ("R36", "4.4")}


class ManifestError(ValueError):
    """The manifest is missing a key or has a value of the wrong type (the message names the key)."""


@dataclass(frozen=True)
class Manifest:
    """The pinned versions: L4T release/revision and package-name -> required upstream version prefix."""

    jetpack: str
    l4t_release: str
    l4t_revision: str
    packages: dict[str, str]
    python_minimum: str


@dataclass
class Report:
    """Outcome of a check; ``mismatches`` holds one human-readable line per difference."""

    is_jetson: bool
    found_l4t: str | None = None
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.is_jetson and not self.mismatches


def _get(table: dict, dotted: str, kind: type) -> object:
    node: object = table
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ManifestError(f"manifest: missing key {dotted!r}")
        node = node[part]
    if not isinstance(node, kind):
        raise ManifestError(f"manifest: {dotted!r} must be a {kind.__name__}, got {type(node).__name__}")
    return node


def load_manifest(path: Path = DEFAULT_MANIFEST) -> Manifest:
    """Read and validate ``jetpack.toml``; raises :class:`ManifestError` naming the bad key."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"manifest {path}: {exc}") from exc
    packages = _get(data, "packages", dict)
    for name, version in packages.items():  # type: ignore[union-attr]
        if not isinstance(version, str) or not version:
            raise ManifestError(f"manifest: packages.{name!r} must be a non-empty version string")
    release = str(_get(data, "l4t.release", str))
    if not re.fullmatch(r"R\d+", release):
        raise ManifestError(f"manifest: 'l4t.release' must look like R36, got {release!r}")
    jetpack, revision = str(_get(data, "jetpack.version", str)), str(_get(data, "l4t.revision", str))
    if jetpack in JETPACK_L4T and JETPACK_L4T[jetpack] != (release, revision):
        want = "{}.{}".format(*JETPACK_L4T[jetpack])
        raise ManifestError(f"manifest: 'l4t' is {release}.{revision} but JetPack {jetpack} is L4T {want}")
    return Manifest(jetpack=jetpack, l4t_release=release, l4t_revision=revision,
                    packages=dict(packages),  # type: ignore[arg-type]
                    python_minimum=str(_get(data, "python.minimum", str)))


def parse_tegra_release(text: str) -> tuple[str, str]:
    """``(release, revision)`` from ``/etc/nv_tegra_release``, e.g. ``("R36", "4.3")``."""
    first = text.splitlines()[0] if text.strip() else ""
    match = _RELEASE_RE.match(first)
    if not match:
        raise ValueError(f"nv_tegra_release: first line not understood: {first!r}")
    return match.group(1), match.group(2)


def dpkg_versions(status_text: str) -> dict[str, str]:
    """Installed package -> version from a dpkg ``status`` file (only ``install ok installed`` entries).

    Read directly rather than through ``dpkg-query`` so that the check also works on a rootfs that is not
    running (``--root``: an L4T ``Linux_for_Tegra/rootfs`` on the build host)."""
    out: dict[str, str] = {}
    for stanza in status_text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields.get("Status") == "install ok installed" and "Package" in fields and "Version" in fields:
            out[fields["Package"]] = fields["Version"]
    return out


def _upstream(version: str) -> str:
    """Drop a Debian epoch (``1:``) so that version prefixes compare upstream versions."""
    return version.split(":", 1)[1] if ":" in version.split("-", 1)[0] else version


def check(manifest: Manifest, root: Path = Path("/")) -> Report:
    """Compare the system under ``root`` with ``manifest``; a non-Jetson host gives ``is_jetson=False``."""
    release_file = root / TEGRA_RELEASE
    if not release_file.exists():
        return Report(is_jetson=False)
    report = Report(is_jetson=True)
    try:
        release, revision = parse_tegra_release(release_file.read_text(errors="replace"))
    except ValueError as exc:
        report.mismatches.append(f"L4T: {exc}")
        return report
    report.found_l4t = f"{release}.{revision}"
    want = f"{manifest.l4t_release}.{manifest.l4t_revision}"
    if report.found_l4t != want:
        report.mismatches.append(f"L4T: installed {report.found_l4t}, manifest pins {want} "
                                 f"(JetPack {manifest.jetpack})")
    status = root / DPKG_STATUS
    installed = dpkg_versions(status.read_text(errors="replace")) if status.exists() else {}
    for name, prefix in sorted(manifest.packages.items()):
        have = installed.get(name)
        if have is None:
            report.mismatches.append(f"package {name}: not installed, manifest pins {prefix}*")
        elif not (_upstream(have) == prefix or _upstream(have).startswith((prefix + ".", prefix + "-",
                                                                           prefix + "+", prefix + "~"))):
            report.mismatches.append(f"package {name}: installed {have}, manifest pins {prefix}*")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="pinned versions (jetpack.toml)")
    parser.add_argument("--root", type=Path, default=Path("/"), help="root of the system to check (default /)")
    args = parser.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_MANIFEST
    report = check(manifest, args.root)
    if not report.is_jetson:
        print(f"not a Jetson: {args.root / TEGRA_RELEASE} is absent, so there is no L4T/JetPack to compare "
              f"with the manifest (JetPack {manifest.jetpack}, L4T {manifest.l4t_release}.{manifest.l4t_revision})")
        return EXIT_NOT_JETSON
    for line in report.mismatches:
        print(f"MISMATCH {line}")
    if report.ok:
        print(f"ok: L4T {report.found_l4t} and {len(manifest.packages)} pinned packages match "
              f"JetPack {manifest.jetpack}")
        return EXIT_OK
    return EXIT_MISMATCH


if __name__ == "__main__":
    sys.exit(main())
