"""neopain networks and everything that feeds them, usable without the appliance."""
