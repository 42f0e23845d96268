"""Fixtures for the monitor tests: ``mutate``, the cheap byte-mutation program of ``mutations.py`` for fuzzing
parsers."""

import pytest

from tests.appliance.sources.monitor.mutations import apply_mutations


@pytest.fixture(scope="session")
def mutate():
    return apply_mutations
