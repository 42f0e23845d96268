"""The code stays runnable on Python 3.10, JetPack 6's python3 (image/README.md, "Why the platform's Python").

Two checks: vermin (the field's static minimum-version checker) over every package, and, where a 3.10
interpreter is installed, ``compileall`` under it (what vermin, parsing with this interpreter's grammar,
could miss: syntax that only newer parsers accept)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["appliance", "calibration", "models", "image", "setup.py"]
# vermin cannot infer types: ``x.is_integer()`` on a float (any Python) reads to it as int.is_integer (3.12).
VERMIN_EXCLUDES = ["int.is_integer"]


def vermin_cmd() -> list[str] | None:
    exe = Path(sys.executable).with_name("vermin")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("vermin")
    return [found] if found else None


def run_vermin(*paths: str) -> subprocess.CompletedProcess[str]:
    cmd = vermin_cmd()
    if cmd is None:
        pytest.skip("vermin not installed (pip install -e .[test])")
    excludes = [arg for name in VERMIN_EXCLUDES for arg in ("--exclude", name)]
    return subprocess.run([*cmd, "--no-tips", "--no-make-paths-absolute", "-t=3.10-", "--violations",
                           "--eval-annotations", *excludes, *paths],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_packages_need_nothing_newer_than_python_310() -> None:
    result = run_vermin(*TARGETS)
    assert result.returncode == 0, f"3.11+-only code found (see image/README.md):\n{result.stdout}{result.stderr}"
    assert "Minimum required versions" in result.stdout


def test_vermin_would_catch_311_only_code(tmp_path: Path) -> None:
    """The check above is not vacuous: the 3.11 features JetPack's 3.10 lacks are reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import tomllib\nfrom datetime import UTC\nfrom enum import StrEnum\nfrom typing import Self\n")
    result = run_vermin(str(bad))
    assert result.returncode != 0
    for name in ("tomllib", "datetime.UTC", "enum.StrEnum", "typing.Self"):
        assert name in result.stdout, result.stdout
    guarded = tmp_path / "guarded.py"  # the pattern appliance/config.py uses passes
    guarded.write_text("import sys\nif sys.version_info >= (3, 11):\n    import tomllib\n"
                       "else:\n    import tomli as tomllib\n")
    assert run_vermin(str(guarded)).returncode == 0


def python310() -> str | None:
    """A working Python 3.10 (JetPack 6's python3), if this machine has one."""
    candidates = [*sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.10*/bin/python3.10"))),
                  shutil.which("python3.10")]
    for exe in filter(None, candidates):
        probe = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                               text=True, timeout=30)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 10)":
            return exe
    return None


@pytest.mark.skipif(python310() is None, reason="no Python 3.10 here")
def test_every_module_compiles_under_python_310(tmp_path: Path) -> None:
    # PYTHONPYCACHEPREFIX: the 3.10 byte code goes to a throwaway folder, not into the checkout.
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)}
    result = subprocess.run([python310(), "-m", "compileall", "-q", *TARGETS], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
