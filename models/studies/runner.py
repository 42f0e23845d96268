"""Resumable steps of a study, each one ``neopain`` command in a subprocess.

Why subprocesses: each step is exactly what a user would type (the report prints the commands), a crash
loses one step, and every step runs single-threaded (``OMP_NUM_THREADS=1``: on a shared 2-core machine
multi-threaded torch ran ~10x slower). Why resumable: a study is many runs; a step whose outputs exist
(and whose recorded command is the same) is skipped, so a study interrupted or extended picks up where it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from models.data.layout import SUBJECTS_FILE

STEP_FILE = ".study-step.json"  # in a step's output folder: its command and wall time, written when it finished
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class StudyError(RuntimeError):
    """A step failed or an existing output was made by another command (``--work`` mixes recipes)."""


def neopain_executable() -> str:
    """The ``neopain`` console script of this interpreter's environment (else the one on PATH)."""
    beside = Path(sys.executable).parent / "neopain"
    return str(beside) if beside.exists() else (shutil.which("neopain") or "neopain")


@dataclass
class Step:
    """One command whose success is marked by ``STEP_FILE`` in ``out`` (or in ``marker_dir``)."""

    name: str
    args: list[str]
    out: Path
    marker_dir: Path | None = None

    @property
    def marker(self) -> Path:
        return (self.marker_dir or self.out) / STEP_FILE

    def done(self) -> bool:
        if not self.marker.is_file():
            return False
        recorded = json.loads(self.marker.read_text())["args"]
        if recorded != self.args:
            raise StudyError(f"{self.marker}: made by `neopain {' '.join(recorded)}`, this study asks for "
                             f"`neopain {' '.join(self.args)}`; use another --work folder")
        return True


@dataclass
class Runner:
    """Runs steps under one progress bar, skipping finished ones; keeps each step's wall time.

    ``jobs`` > 1 runs independent steps (the seeds of a study) side by side, each single-threaded: on a
    shared machine that uses the cores better than one multi-threaded torch.
    """

    work: Path
    progress: bool = True
    log: list[dict] = field(default_factory=list)

    def run(self, steps: list[Step], jobs: int = 1) -> list[dict]:
        """Run the unfinished steps, ``jobs`` at a time (independent steps only); the log keeps the steps' order."""
        records: dict[int, dict] = {}
        todo = []
        for i, step in enumerate(steps):
            if step.done():
                records[i] = {**json.loads(step.marker.read_text()), "name": step.name, "reused": True}
            else:
                todo.append(i)
        with tqdm(total=len(steps), initial=len(records), desc="study steps", unit="step",
                  disable=not self.progress) as bar, ThreadPoolExecutor(max(1, jobs)) as pool:
            futures = {pool.submit(self._execute, steps[i]): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                records[i] = {**future.result(), "name": steps[i].name, "reused": False}
                bar.set_postfix_str(steps[i].name)
                bar.update()
        self.log.extend(records[i] for i in range(len(steps)))
        return self.log

    def _execute(self, step: Step) -> dict:
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{step.name.replace('/', '_')}.log"
        resumed = step.out.is_dir() and any(step.out.iterdir())  # e.g. a train run interrupted and resumed
        start = time.monotonic()
        with log_path.open("w") as log:
            rc = subprocess.call([neopain_executable(), *step.args], stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **SINGLE_THREAD})
        wall = time.monotonic() - start
        if rc != 0:
            tail = log_path.read_text()[-2000:]
            raise StudyError(f"step {step.name} failed (exit {rc}): neopain {' '.join(step.args)}\n{tail}")
        record = {"args": step.args, "wall_s": round(wall, 1), "resumed": resumed,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        step.marker.parent.mkdir(parents=True, exist_ok=True)
        step.marker.write_text(json.dumps(record, indent=1))
        return record


def subset_cohort(full: Path, n_infants: int, out: Path) -> Path:
    """The first ``n_infants`` of a synthetic cohort as a cohort of its own (links, no copies).

    Valid because ``neopain synth`` draws infant i from its own stream (seed, 1, i) and the raters from
    (seed, 0): the first n infants of a cohort of N are the cohort of n with the same seed, byte for byte.
    """
    lines = (full / SUBJECTS_FILE).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    if n_infants > len(rows):
        raise StudyError(f"--sizes asks for {n_infants} infants, the cohort {full} has {len(rows)}")
    keep = rows[:n_infants]
    out.mkdir(parents=True, exist_ok=True)
    for row in keep:
        sid = row.split(",")[0]
        link = out / sid
        if not link.exists():
            link.symlink_to((full / sid).resolve(), target_is_directory=True)
    (out / SUBJECTS_FILE).write_text("\n".join([header, *keep]) + "\n")
    return out
