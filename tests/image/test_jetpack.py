"""The pinned JetPack manifest and the device check (run against fake roots: no Jetson here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from image import jetpack
from tests.test_python_compat import python310

TEGRA_R36_4_3 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025\n"


def fake_device(root: Path, release_text: str | None, packages: dict[str, str]) -> Path:
    if release_text is not None:
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc/nv_tegra_release").write_text(release_text)
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True, exist_ok=True)
    stanzas = [f"Package: {name}\nStatus: install ok installed\nArchitecture: arm64\nVersion: {version}\n"
               for name, version in packages.items()]
    stanzas.append("Package: removed-thing\nStatus: deinstall ok config-files\nVersion: 1.0\n")
    status.write_text("\n".join(stanzas))
    return root


def matching_packages(manifest: jetpack.Manifest) -> dict[str, str]:
    """Installed versions as NVIDIA/Ubuntu spell them: the pinned upstream version plus a build suffix."""
    return {name: f"{prefix}.7-1+cuda12.6" for name, prefix in manifest.packages.items()}


def test_manifest_pins_l4t_cuda_tensorrt_and_python() -> None:
    manifest = jetpack.load_manifest()
    assert manifest.l4t_release.startswith("R") and manifest.l4t_revision
    names = set(manifest.packages)
    assert {"nvidia-l4t-core", "libnvinfer10"} <= names
    assert any(n.startswith("cuda-cudart") for n in names) and any(n.startswith("libcudnn") for n in names)
    assert manifest.packages["nvidia-l4t-core"] == f"{manifest.l4t_release[1:]}.{manifest.l4t_revision}"
    assert manifest.python_minimum == "3.10" and manifest.packages["python3"] == "3.10"


def test_a_device_on_the_pinned_release_passes(tmp_path: Path) -> None:
    manifest = jetpack.load_manifest()
    root = fake_device(tmp_path, TEGRA_R36_4_3, matching_packages(manifest))
    report = jetpack.check(manifest, root)
    assert report.is_jetson and report.mismatches == [] and report.ok
    assert report.found_l4t == "R36.4.3"


def test_other_l4t_and_tensorrt_are_each_reported(tmp_path: Path) -> None:
    manifest = jetpack.load_manifest()
    packages = matching_packages(manifest)
    packages["libnvinfer10"] = "10.7.0.23-1+cuda12.6"  # 10.7 must not pass for a 10.3 pin
    del packages["libcudnn9-cuda-12"]
    root = fake_device(tmp_path, TEGRA_R36_4_3.replace("REVISION: 4.3", "REVISION: 3.0"), packages)
    report = jetpack.check(manifest, root)
    assert not report.ok
    text = "\n".join(report.mismatches)
    assert "L4T: installed R36.3.0" in text and "libnvinfer10: installed 10.7.0.23" in text
    assert "libcudnn9-cuda-12: not installed" in text and len(report.mismatches) == 3


@pytest.mark.parametrize("installed, ok", [("10.3.0.30-1+cuda12.5", True), ("10.3", True),
                                           ("1:10.3.0-1", True), ("10.30.1-1", False), ("10.2.9-1", False)])
def test_prefix_match_is_on_version_components(tmp_path: Path, installed: str, ok: bool) -> None:
    """A 10.3 pin accepts 10.3.x builds (with epoch or suffix) but not 10.30."""
    manifest = jetpack.Manifest("6.2", "R36", "4.3", {"libnvinfer10": "10.3"}, "3.10")
    root = fake_device(tmp_path, TEGRA_R36_4_3, {"libnvinfer10": installed})
    assert jetpack.check(manifest, root).ok is ok


def test_non_jetson_host_says_so_with_exit_3(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(Path(jetpack.__file__)), "--root", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == jetpack.EXIT_NOT_JETSON
    assert "not a Jetson" in result.stdout and "nv_tegra_release" in result.stdout


def test_cli_lists_mismatches_with_exit_1(tmp_path: Path) -> None:
    root = fake_device(tmp_path, TEGRA_R36_4_3.replace("R36", "R35"), {})
    result = subprocess.run([sys.executable, str(Path(jetpack.__file__)), "--root", str(root)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == jetpack.EXIT_MISMATCH
    assert result.stdout.count("MISMATCH") == 1 + len(jetpack.load_manifest().packages)


def test_bad_manifest_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "jetpack.toml"
    bad.write_text('[jetpack]\nversion = "6.2"\n[l4t]\nrelease = "R36"\n[packages]\n[python]\nminimum = "3.10"\n')
    with pytest.raises(jetpack.ManifestError, match="l4t.revision"):
        jetpack.load_manifest(bad)


def test_unreadable_release_line_is_a_mismatch_not_a_crash(tmp_path: Path) -> None:
    root = fake_device(tmp_path, "garbage\n", {})
    report = jetpack.check(jetpack.load_manifest(), root)
    assert report.is_jetson and not report.ok and "not understood" in report.mismatches[0]


def test_manifest_l4t_must_be_the_jetpack_release(tmp_path: Path) -> None:
    """JetPack 6.2 is L4T R36.4.3 (NVIDIA's pairing); a manifest bumping only one of them is refused."""
    text = (Path(jetpack.__file__).with_name("jetpack.toml")).read_text()
    assert jetpack.load_manifest().l4t_revision == jetpack.JETPACK_L4T["6.2"][1]
    bad = tmp_path / "jetpack.toml"
    bad.write_text(text.replace('revision = "4.3"', 'revision = "4.4"'))
    with pytest.raises(jetpack.ManifestError, match=r"R36.4.4 but JetPack 6.2 is L4T R36.4.3"):
        jetpack.load_manifest(bad)


def test_python_is_the_platforms_own() -> None:
    """The venv's interpreter is JetPack 6's python3 (3.10, what NVIDIA's TensorRT bindings and Jetson torch
    wheels are built for), pinned in the manifest, and equal to setup.py's python_requires and the .deb's
    Depends."""
    import re

    from image import debian

    data = jetpack.tomllib.loads(Path(jetpack.__file__).with_name("jetpack.toml").read_text())
    py = data["python"]
    assert py["interpreter"] == "python3" == debian.PYTHON
    assert py["minimum"] == py["system"] == data["packages"]["python3"] == data["packages"]["python3-venv"]
    assert py["wheel_tag"].startswith(debian.PYTHON_TAG + "-") and debian.PYTHON_TAG == "cp" + py["system"].replace(".", "")
    assert data["packages"]["python3-libnvinfer"] == data["packages"]["libnvinfer10"]  # bindings of that TensorRT
    assert f"python3 (>= {py['minimum']})" in debian.DEPENDS
    setup = (Path(jetpack.__file__).parents[1] / "setup.py").read_text()
    assert re.search(r'python_requires\s*=\s*">=\s*([0-9.]+)"', setup).group(1) == py["minimum"]


@pytest.mark.skipif(python310() is None, reason="no Python 3.10 here (JetPack 6's python3)")
def test_under_python_310_without_tomli_it_says_what_to_install(tmp_path: Path) -> None:
    """-S: no site-packages, so no tomli: the plain python3 of a device without python3-tomli."""
    result = subprocess.run([python310(), "-S", str(Path(jetpack.__file__)), "--root", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == jetpack.EXIT_BAD_MANIFEST and "Traceback" not in result.stderr
    assert "needs tomli" in result.stderr and "python3-tomli" in result.stderr
