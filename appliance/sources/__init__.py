"""Sensor drivers. Each opens one external thing, owns its reconnect policy and reports its health."""
