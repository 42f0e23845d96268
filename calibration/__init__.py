"""Field calibration and commissioning for clinical engineers."""
