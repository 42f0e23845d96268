"""What every model of one ``neopain train`` shares: processes, init checkpoints, feature cache, log."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from models.training.distributed import Distributed
from models.training.feature_cache import FeatureCache
from models.training.init import InitCheckpoint

LOG_NAME = "train.log"


@dataclass
class TrainSession:
    """The run-wide context of training: ``dist`` (torchrun), ``inits`` (weights copied into every model that
    owns the encoder), ``cache`` (None: frozen encoders are run), ``log_path`` (None: no log file)."""

    dist: Distributed = field(default_factory=Distributed)
    inits: list[InitCheckpoint] = field(default_factory=list)
    cache: FeatureCache | None = None
    log_path: Path | None = None
    progress: bool = True
    _echoed: set = field(default_factory=set)

    def log(self, text: str, echo_key: object = None) -> None:
        """Append ``text`` to the run's log (process 0 only) and print it; with ``echo_key``, print it only the
        first time that key is seen (e.g. the same phase table for every fold)."""
        if not self.dist.is_main:
            return
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as handle:
                handle.write(text.rstrip("\n") + "\n")
        if echo_key is None or echo_key not in self._echoed:
            if echo_key is not None:
                self._echoed.add(echo_key)
            tqdm.write(text)
