"""Project-wide test settings: deterministic torch, one torch thread for every test, and Ctrl-C armed.

One thread: tiny tensors gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP
spin-waiting made a tiny fusion forward ~100x slower (1.4 s vs 16 ms measured). Set per test, because
some code under test (``neopain bench``, the torch engine) sets the thread count itself.
"""

import signal

import pytest
import torch

# Ctrl-C for the children tests start: a shell running the suite in the background (``./run test &``) starts
# it with SIGINT ignored, children inherit that through exec, and Python then installs no KeyboardInterrupt
# handler, so a SIGINT a test sends in place of Ctrl-C would be ignored. A handler of our own is reset to the
# default at exec, so every child gets Python's usual Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _deterministic_single_threaded_torch():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield



@pytest.fixture(scope="session")
def tiny_final_run(tmp_path_factory: pytest.TempPathFactory):
    """``neopain train --final`` of the tiny fusion model on a 4-infant, 30-s synthetic cohort (1 epoch): the
    run folder with ``final/fusion.pt`` and its model card, and the cohort it was trained on. Read-only."""
    from appliance.cli import main

    tmp = tmp_path_factory.mktemp("tiny-final")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures start before the per-test setting above
    try:
        assert main(["synth", "--out", str(tmp / "cohort"), "--infants", "4", "--seed", "1", "--minutes", "0.5",
                     "--video-size", "32", "--fps", "8", "--quiet"]) == 0
        assert main(["train", "--data", str(tmp / "cohort"), "--out", str(tmp / "run"), "--folds", "0", "--final",
                     "--epochs", "1", "--models", "fusion", "--device", "cpu", "--quiet"]) == 0
    finally:
        torch.set_num_threads(before)
    return tmp / "run"


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_final_run, tmp_path_factory: pytest.TempPathFactory):
    """One deployable tiny model for every test that runs a daemon or engines and not for its scores: the final
    model of ``tiny_final_run`` through ``neopain export`` (four ONNX parts, the manifest carrying the model
    card). Read-only: copy it to damage it."""
    from appliance.cli import main

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    checkpoint = tiny_final_run / "final" / "fusion.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet"]) == 0
    return out
