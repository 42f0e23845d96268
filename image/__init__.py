"""Device image tooling: the pinned JetPack/L4T manifest and its on-device check, and the Debian packaging.

Not part of the installed ``neopain`` wheel (setup.py does not list it): it runs on the build host and, as a
plain script, on the device (``/opt/neopain/image/jetpack.py``)."""
