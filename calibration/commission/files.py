"""Private folders and files for what commissioning and INT8 capture leave on the device (patient data).

Why one helper: both the commissioning report (face snapshot, level and vitals traces) and the INT8
calibration windows (face crops at network size, audio features) are patient data that stay on the device;
both go into a folder only the service user can enter (0700) as files only it can read (0600), also when the
folder or file already existed with looser permissions.
"""
from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700 (also when it existed with looser permissions)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def private_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` created 0600 (an existing file is truncated and tightened to 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)  # O_CREAT keeps an existing file's mode
    return Path(path)
