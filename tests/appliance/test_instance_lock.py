"""One ``neopain run`` per state directory (appliance/instance_lock.py): the second is refused naming the
holder's PID, and the kernel frees the lock when the holder dies, even by SIGKILL. The daemon-level check (a
second ``neopain run`` exits 2) is in tests/reliability/test_faults.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.instance_lock import LOCK_NAME, InstanceLock, InstanceLocked

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from appliance.instance_lock import InstanceLock; "
        "InstanceLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")


def test_second_holder_is_refused_naming_the_pid_and_a_killed_holder_frees_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(InstanceLocked) as info:
            InstanceLock(state).acquire()
        assert info.value.pid == holder.pid
        assert f"PID {holder.pid}" in str(info.value) and str(state / LOCK_NAME) in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    with InstanceLock(state):  # the crash released it; the stale file is no obstacle
        assert (state / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(InstanceLocked):
            InstanceLock(state).acquire()  # another open file description in the same process: refused too
    InstanceLock(state).acquire().release()  # released on exit from the block
