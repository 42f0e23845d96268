"""The one runtime interface every backend implements."""

from __future__ import annotations

import abc
from typing import Mapping, Sequence

import numpy as np


class EngineError(RuntimeError):
    """An engine that cannot be built, loaded or run (corrupt file, wrong inputs, backend failure)."""


class BackendUnavailable(EngineError):
    """The backend's library or hardware is not present here (e.g. TensorRT without a GPU)."""


class Engine(abc.ABC):
    """A compiled network: named numpy inputs in, named numpy outputs out, batch first.

    Why numpy at the boundary: the three backends share no tensor type (TensorRT device buffers, ONNX
    Runtime OrtValues, torch tensors); numpy is what the pre-processing produces and what the publisher
    consumes, so the pipeline never depends on which backend runs.
    """

    backend: str = "?"
    input_names: Sequence[str] = ()
    output_names: Sequence[str] = ()

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; every name in ``input_names`` must be given."""

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in inputs]
        extra = [n for n in inputs if n not in self.input_names]
        if missing or extra:
            raise EngineError(
                f"{self.backend} engine inputs: missing {missing or 'none'}, unexpected {extra or 'none'};"
                f" expected {list(self.input_names)}"
            )

    def close(self) -> None:
        """Release device memory; the default has nothing to release."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
