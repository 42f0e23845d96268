"""Fixtures shared by the reliability suites: the real mosquitto broker and subscriber from the MQTT tests,
and ``record_result`` (rows for ``docs/reliability.md``, see ``results.py``)."""
from __future__ import annotations

from typing import Callable

import pytest

from tests.appliance.mqtt.broker import broker_factory, subscriber_factory
from tests.reliability.results import ResultRow, record

# The MQTT tests' broker fixtures, re-exported (pytest finds a conftest's fixtures by attribute name); this
# module's own fixture follows.
__all__ = ["broker_factory", "subscriber_factory"]


@pytest.fixture
def record_result() -> Callable[..., None]:
    """``record_result(section, name, expected, observed, passed, produced=, delivered=, lost=)``."""

    def _record(section: str, name: str, expected: str, observed: str, passed: bool, **counts) -> None:
        record(ResultRow(section=section, name=name, expected=expected, observed=observed, passed=passed, **counts))

    return _record
