"""The `neopain` command as a user runs it (a real subprocess of the installed console script's module)."""

import re
import subprocess
import sys

import pytest

from models.summary import summarize


def neopain(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_subcommands():
    out = neopain("--help")
    assert out.returncode == 0
    for command in ("demo", "run", "models", "synth", "train", "evaluate", "config", "simulate-bed", "watch", "bridge", "export", "build-engines", "bench"):
        assert command in out.stdout


def test_models_summary_tiny_prints_every_network():
    out = neopain("models", "summary", "--config", "tiny")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines()[2:] if line.strip()]
    assert len(rows) == 8
    for row in rows:
        params, gmac = re.search(r"\s([\d.]+)\s+([\d.]+)\s+\d", row).groups()
        assert float(params) > 0


def test_summary_estimator_costs_at_least_its_video_encoder():
    rows = {r.name: r for r in summarize("tiny")}
    estimator = rows["pain estimator (all)"]
    assert estimator.params > rows["video encoder (I3D tokens)"].params
    assert estimator.gmac >= rows["video encoder (I3D tokens)"].gmac


def test_smoke_demo_scores_every_modality_subset():
    out = neopain("models", "demo", "--config", "tiny")
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if re.match(r"^(video|audio|vitals)", line)]
    assert len(rows) == 7
    for row in rows:
        nips = float(row.split()[1])
        assert 0.0 <= nips <= 7.0


@pytest.mark.parametrize("args", [["train"], ["models"], ["nonsense"]])
def test_bad_usage_exits_2_with_a_message(args):
    out = neopain(*args)
    assert out.returncode == 2
    assert "usage" in out.stderr
