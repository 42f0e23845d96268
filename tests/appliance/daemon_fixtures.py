"""Module-scoped fixtures for suites that run the daemon on a simulated bed: a small synthetic cohort and the
deployable tiny model.

Why a plain module: the daemon end-to-end test, the calibration round trip and the reliability suites share
them, and each importing test module gets its own module-scoped instance, as with a fixture it defined itself.
"""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from appliance.devtools.simulate import synth_bed_cohort

    return synth_bed_cohort(tmp_path_factory.mktemp("cohort"), minutes=0.5, seed=3, video_size=112)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path) -> Path:
    """The deployable tiny model (tests/conftest.py: a final checkpoint with its model card, exported); modules
    that import this fixture get it by this name."""
    return tiny_model_dir
