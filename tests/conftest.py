"""Project-wide test settings: deterministic torch, and one torch thread for every test.

One thread: tiny tensors gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP
spin-waiting made a tiny fusion forward ~100x slower (1.4 s vs 16 ms measured). Set per test, because
some code under test (``neopain bench``, the torch engine) sets the thread count itself.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_single_threaded_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield
