"""Test helper: an ALSA configuration whose capture PCM replays a raw file (ALSA's file plugin).

Why: the tests (and the simulated bed) need pyalsaaudio to capture known samples through the real ALSA
library on machines without a sound card. The config includes the system alsa.conf first, then defines a
PCM that reads ``infile`` (raw S16_LE) and discards playback into /dev/null. ALSA reads its configuration
from ``ALSA_CONFIG_PATH`` when the first PCM is opened, so capture runs in a child process that gets the
variable in its environment: the test process's own ALSA state is never touched.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SYSTEM_ALSA_CONF = "/usr/share/alsa/alsa.conf"


def write_alsa_config(directory: Path, infile: Path, pcm_name: str = "replay") -> Path:
    """Write ``asound.conf`` in ``directory`` defining ``pcm.<pcm_name>`` that captures from ``infile``."""
    for bad in ('"', "\n"):
        if bad in str(infile) or bad in pcm_name:
            raise ValueError(f"write_alsa_config: {bad!r} not allowed in infile or pcm_name")
    if os.path.exists(SYSTEM_ALSA_CONF):
        head, slave = f"<{SYSTEM_ALSA_CONF}>\n", 'slave.pcm "null"'
    else:
        head, slave = "", "slave.pcm { type null }"
    text = (f'{head}pcm.{pcm_name} {{ type file; {slave}; file "/dev/null"; '
            f'infile "{infile}"; format "raw" }}\n')
    path = Path(directory) / "asound.conf"
    path.write_text(text)
    return path


def run_with_alsa(config_path: Path, code: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child process with ``ALSA_CONFIG_PATH`` pointing at ``config_path``."""
    env = dict(os.environ, ALSA_CONFIG_PATH=str(config_path))
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=root)
