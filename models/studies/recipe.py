"""The fixed recipes of the studies and the steps (commands) they are made of.

Why fixed before looking: issue 14 forbids tuning seeds or thresholds toward a result, so the seeds, sizes
and training recipe are constants here, chosen from the CPU budget alone, and every report prints them.
The defaults are the sizes that fit the 2-core development machine (docs/benchmarks/fusion_question.md
says what the issue's full sizes would cost); the command's options scale them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from models.recipe import DEFAULT_CONFIG, DEFAULT_EPOCHS

if TYPE_CHECKING:  # the runner pulls in models.data (OpenCV, SciPy): the demo reads TrainRecipe without them
    from models.studies.runner import Step

COHORTS = "cohorts"
DEFAULT_WORK = Path.home() / ".cache" / "neopain" / "studies"


@dataclass(frozen=True)
class TrainRecipe:
    """How every model of a study is trained (``neopain train`` options)."""

    config: str = DEFAULT_CONFIG
    folds: int = 3
    epochs: int = DEFAULT_EPOCHS
    minutes: float = 1.0  # length of each synthetic recording

    def describe(self) -> str:
        return (f"`{self.config}` config, {self.epochs} epochs, other `neopain train` defaults; "
                f"{self.minutes:g}-minute recordings (synth defaults: every confounder on)")


def _num(value: float) -> str:
    return f"{value:g}"


def synth_step(work: Path, role: str, n_infants: int, seed: int, minutes: float) -> Step:
    """A synthetic cohort ``WORK/cohorts/<role>-s<seed>-n<N>`` (role: train or test)."""
    from models.studies.runner import Step

    out = work / COHORTS / f"{role}-s{seed}-n{n_infants}"
    args = ["synth", "--out", str(out), "--infants", str(n_infants), "--seed", str(seed), "--minutes", _num(minutes),
            "--quiet"]
    return Step(f"synth {out.name}", args, out)


def train_step(name: str, data: Path, out: Path, recipe: TrainRecipe, models: tuple[str, ...], seed: int, *,
               folds: int | None = None, final: bool = False) -> Step:
    """``neopain train`` of ``models`` on ``data`` into ``out`` (``folds`` overrides the recipe's)."""
    from models.studies.runner import Step

    args = ["train", "--data", str(data), "--out", str(out), "--config", recipe.config, "--models", ",".join(models),
            "--folds", str(recipe.folds if folds is None else folds), "--epochs", str(recipe.epochs),
            "--seed", str(seed), "--quiet"]
    return Step(name, args + (["--final"] if final else []), out)


def evaluate_step(name: str, model: Path, data: Path, out: Path, cache: Path) -> Step:
    """``neopain evaluate --model`` of trained models on another cohort (decoded windows cached once)."""
    from models.studies.runner import Step

    args = ["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--cache", str(cache), "--quiet"]
    return Step(name, args, out)
