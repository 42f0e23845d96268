"""The synthetic cohort: reproducible, in the layout, with the covariates and behaviour it promises."""

from __future__ import annotations

import argparse
import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from models.data.layout import read_dataset, read_subjects
from models.data.loader import load_windows
from models.data.synth import SynthOptions, add_synth_arguments, cli_synth, synth_cohort
from models.data.synth_video import SKIN_TONES, VideoOptions

TINY = SynthOptions(minutes=0.5, video=VideoOptions(size=48, fps=8.0))


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = (synth_cohort(tmp_path / n, 2, seed=s, options=TINY, progress=False) for n, s in
               (("a", 7), ("b", 7), ("c", 8)))
    ha, hb, hc = _hashes(a.root), _hashes(b.root), _hashes(c.root)
    assert len(ha) >= 2 * 7 + 1  # subjects.csv + 7 files per recording at least
    assert ha == hb
    common = set(ha) & set(hc)
    assert "S001/R01/audio.wav" in common
    for name in ("S001/R01/audio.wav", "S001/R01/vitals.csv", "S001/R01/video.mp4"):
        assert ha[name] != hc[name], name


def test_cohort_is_a_valid_dataset_with_covariates(cohort: Path) -> None:
    ds = read_dataset(cohort)
    subjects = read_subjects(cohort / "subjects.csv")
    assert len(ds.recordings) == 4 and set(subjects) == {"S001", "S002", "S003", "S004"}
    for s in subjects.values():
        assert 24.0 <= s.gestational_age_weeks < 42.0
        assert s.skin_tone_group in SKIN_TONES
        assert s.sex in ("M", "F")
        assert not s.intubated  # intubated_probability=0 in this cohort
    for rec in ds.recordings:
        assert rec.video.width == rec.video.height == 64 and rec.video.fps == pytest.approx(8.0)
        assert rec.audio.rate in (16000, 22050)
        assert len(rec.windows) == 6
        assert all(len(w.ratings) == 2 for w in rec.windows)
        assert rec.meta.extra["procedures"], "every recording holds at least one procedure"
        # Devices run on other clocks than the recording: the loader must apply these offsets.
        assert abs(rec.offset("vitals")) > 100.0


def test_ratings_are_valid_nips_and_raters_disagree_sometimes(cohort: Path) -> None:
    ranges = {"facial": 1, "cry": 2, "breathing": 1, "arms": 1, "legs": 1, "arousal": 1}
    totals: dict[tuple[str, str], dict[str, int]] = {}
    for path in sorted(cohort.glob("*/*/ratings.csv")):
        with path.open() as fh:
            for row in csv.DictReader(fh):
                items = {k: int(row[k]) for k in ranges}
                assert all(0 <= items[k] <= hi for k, hi in ranges.items()), row
                assert int(row["total"]) == sum(items.values()), row
                totals.setdefault((str(path), row["window_start_s"]), {})[row["rater_id"]] = int(row["total"])
    r1 = np.array([t["R1"] for t in totals.values()])
    r2 = np.array([t["R2"] for t in totals.values()])
    assert r1.max() >= 5, "procedures should provoke severe pain somewhere"
    assert (r1 != r2).any(), "two simulated raters never disagree: unrealistic"
    assert np.corrcoef(r1, r2)[0, 1] > 0.7, "raters should still agree well"


def test_intubated_infant_has_same_pain_but_no_audible_cry(tmp_path: Path) -> None:
    """Intubation changes only the cry: ratings are the same, the cry is gone from the audio."""
    loud = synth_cohort(tmp_path / "loud", 1, seed=0, options=SynthOptions(
        minutes=1.0, intubated_probability=0.0, video=VideoOptions(size=48, fps=8.0)), progress=False)
    silent = synth_cohort(tmp_path / "silent", 1, seed=0, options=SynthOptions(
        minutes=1.0, intubated_probability=1.0, video=VideoOptions(size=48, fps=8.0)), progress=False)
    assert silent.subjects[0].intubated and not loud.subjects[0].intubated
    rel = "S001/R01/ratings.csv"
    assert (loud.root / rel).read_bytes() == (silent.root / rel).read_bytes()
    w_loud, w_silent = load_windows(loud.root), load_windows(silent.root)
    cry_rated = [w.label.items["cry"] >= 1.5 for w in w_loud]
    assert any(cry_rated), "seed 0 is expected to contain vigorous crying"
    assert any(w.presence.cry_detected for w, c in zip(w_loud, cry_rated) if c)
    assert not any(w.presence.cry_detected for w in w_silent)


def test_cli_synth_writes_a_readable_dataset(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    rc = cli_synth(["--out", str(out), "--infants", "1", "--seed", "3", "--minutes", "0.4", "--video-size", "40",
                    "--container", "avi", "--audio-rates", "8000", "--no-ecg", "--quiet"])
    assert rc == 0
    ds = read_dataset(out)
    rec = ds.recordings[0]
    assert rec.video.path.suffix == ".avi" and rec.video.width == 40
    assert rec.audio.rate == 8000 and rec.ecg_path is None
    with pytest.raises(FileExistsError):
        cli_synth(["--out", str(out), "--infants", "1", "--quiet"])


def test_add_synth_arguments_on_a_subparser_and_bad_rates(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="neopain")
    sub = parser.add_subparsers(dest="cmd")
    add_synth_arguments(sub.add_parser("synth"))
    args = parser.parse_args(["synth", "--out", str(tmp_path), "--infants", "5", "--video-size", "96"])
    assert (args.infants, args.video_size, args.minutes, args.seed) == (5, 96, 3.0, 0)
    with pytest.raises(ValueError, match="--audio-rates"):
        cli_synth(["--out", str(tmp_path / "x"), "--audio-rates", "16k", "--quiet"])
