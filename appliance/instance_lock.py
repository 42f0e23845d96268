"""One ``neopain run`` per state directory: an ``flock`` on ``neopain.lock`` beside the outbox.

Why: two daemons on one state directory both ran: two scores a second for one bed, each kicking the other
off the broker (same client id), the monitor's serial line split between them, and two writers healing or
replaying the same outbox. The second one must stop at start, saying who holds the directory.

Why ``flock``: the kernel releases it when the holder's descriptor closes, including a crash or SIGKILL, so a
stale lock file never blocks a restart (the file itself stays; only the lock matters). The holder writes its
PID into the file so the refusal can name it; the descriptor is not inherited by child processes.
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "neopain.lock"


class InstanceLocked(RuntimeError):
    """Another process holds the state directory's lock; the message names its PID and the lock file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"PID {pid}" if pid is not None else "another process (PID not written yet)"
        super().__init__(f"{path}: {holder} already runs neopain on this state directory "
                         f"(one instance per state directory; stop it first)")


class InstanceLock:
    """Held from :meth:`acquire` until :meth:`release` or the end of the process."""

    def __init__(self, state_dir: Path | str) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "InstanceLock":
        """Take the lock or raise :class:`InstanceLocked` (at once, never waits); OSError when the state
        directory cannot be created or the file cannot be opened."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InstanceLocked(self.path, holder_pid(self.path)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "InstanceLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder_pid(path: Path) -> int | None:
    """The PID written in the lock file, or None when it is not (yet) readable."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
