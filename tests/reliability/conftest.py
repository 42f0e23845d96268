"""Fixtures shared by the reliability suites: the real mosquitto broker and subscriber from the MQTT tests,
and ``record_result`` (rows for ``docs/reliability.md``, see ``results.py``)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Callable

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "appliance"))  # daemon_harness
from results import ResultRow, record  # noqa: E402

_spec = importlib.util.spec_from_file_location("neopain_mqtt_helpers", HERE.parent / "appliance" / "mqtt" / "conftest.py")
_mqtt = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(_mqtt, "Broker"):
    _spec.loader.exec_module(_mqtt)  # type: ignore[union-attr]
broker_factory = _mqtt.broker_factory
subscriber_factory = _mqtt.subscriber_factory
free_port = _mqtt.free_port


@pytest.fixture
def record_result() -> Callable[..., None]:
    """``record_result(section, name, expected, observed, passed, produced=, delivered=, lost=)``."""

    def _record(section: str, name: str, expected: str, observed: str, passed: bool, **counts) -> None:
        record(ResultRow(section=section, name=name, expected=expected, observed=observed, passed=passed, **counts))

    return _record
