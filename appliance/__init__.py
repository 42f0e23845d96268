"""The bedside device program: sensors, windows, engines, calibrated score, MQTT."""
