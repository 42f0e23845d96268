"""Project-wide test settings: deterministic torch, and one torch thread: on a 2-core CI machine small
forwards are ~100x slower with two threads contending with the test process itself."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)
