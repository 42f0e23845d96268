"""Shared synthetic cohorts for the data tests: generated once per session (a few seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.data.synth import SynthOptions, synth_cohort
from models.data.synth_video import VideoOptions

# Small but real: 4 infants x 1 minute = 24 rated windows, 64 px video at 8 fps.
SMALL = SynthOptions(minutes=1.0, intubated_probability=0.0, video=VideoOptions(size=64, fps=8.0))


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    synth_cohort(root, 4, seed=0, options=SMALL, progress=False, overwrite=True)
    return root


@pytest.fixture(scope="session")
def windows(cohort: Path):
    from models.data.loader import load_windows

    return load_windows(cohort)


@pytest.fixture()
def one_recording(cohort: Path, tmp_path: Path) -> Path:
    """A private copy of the cohort's first infant (subjects.csv trimmed to it), safe to damage."""
    root = tmp_path / "ds"
    root.mkdir()
    lines = (cohort / "subjects.csv").read_text().splitlines()
    (root / "subjects.csv").write_text("\n".join(lines[:2]) + "\n")
    sid = lines[1].split(",")[0]
    shutil.copytree(cohort / sid, root / sid)
    return root
