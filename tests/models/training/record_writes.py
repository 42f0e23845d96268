"""``python record_writes.py LOG_DIR ARGS...``: run ``neopain ARGS`` and log every file it creates or changes.

For the torchrun test: each process (``RANK``, 0 when alone) appends to ``LOG_DIR/writes.rank<R>.txt`` one
line per Python audit event that writes (``open`` with a writing mode or flags, ``os.rename`` (also raised
by ``os.replace``), ``os.mkdir``, ``os.remove``). Every file neopain writes goes through one of those:
torch.save's C++ writer does not raise an event, so checkpoints, caches and samples are written to a
temporary name and renamed, and the rename is what shows here.
"""

from __future__ import annotations

import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = ("os.rename", "os.mkdir", "os.remove", "os.rmdir")


def main() -> int:
    log_dir, argv = sys.argv[1], sys.argv[2:]
    log = open(os.path.join(log_dir, f"writes.rank{os.environ.get('RANK', '0')}.txt"), "w", buffering=1)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            if writing and isinstance(path, (str, bytes, os.PathLike)):
                log.write(f"open\t{os.fsdecode(path)}\n")
        elif event in EVENTS:
            log.write(f"{event}\t{os.fsdecode(args[1] if event == 'os.rename' else args[0])}\n")

    sys.addaudithook(hook)
    from appliance.cli import main as neopain

    return neopain(argv)


if __name__ == "__main__":
    sys.exit(main())
