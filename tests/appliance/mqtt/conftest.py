"""Fixtures for the MQTT tests: a real mosquitto broker on 127.0.0.1 and a collecting subscriber (``broker.py``,
shared with the station, end-to-end and reliability tests)."""
from tests.appliance.mqtt.broker import broker, broker_factory, raw_publish, subscriber_factory, unused_port

# pytest finds a conftest's fixtures by attribute name.
__all__ = ["broker", "broker_factory", "raw_publish", "subscriber_factory", "unused_port"]
