"""The synthetic cohort: reproducible, in the layout, with the covariates and behaviour it promises."""

from __future__ import annotations

import argparse
import csv
import hashlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.data.layout import load_audio, read_dataset, read_subjects, read_vitals
from models.data.loader import load_windows
from models.data.synth import SynthOptions, add_synth_arguments, cli_synth, options_from_args, synth_cohort
from models.data.synth_confounders import SILENT_CRY
from models.data.synth_video import SKIN_TONES, VideoOptions
from tests.models.data.synth_probes import face_visible, gray_frames, meta, mouth_openness, truth_rows

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


def test_intubated_infant_silent_cry_rated_seen_not_heard(tmp_path: Path) -> None:
    """Intubation changes only the cry's sound: ratings are the same, the cry is gone from the audio, and the
    silent cry the raters score (NIPS) shows on the face: the mouth opens around the tube in the windows truth.csv
    marks ``confounder_silent_cry``, not in the others. Neighbour cries off: this infant's own sound only."""
    base = SynthOptions(minutes=1.0, skin_tone_mix=(("I-II", 1.0),), video=VideoOptions(size=48, fps=8.0))
    base = replace(base, confounders=replace(base.confounders, neighbour_cries_per_min=0.0))
    loud = synth_cohort(tmp_path / "loud", 1, seed=0, options=replace(base, intubated_probability=0.0), progress=False)
    silent = synth_cohort(tmp_path / "silent", 1, seed=0, options=replace(base, intubated_probability=1.0),
                          progress=False)
    assert silent.subjects[0].intubated and not loud.subjects[0].intubated
    rel = "S001/R01/ratings.csv"
    assert (loud.root / rel).read_bytes() == (silent.root / rel).read_bytes()
    w_loud, w_silent = load_windows(loud.root), load_windows(silent.root)
    cry_rated = [w.label.items["cry"] >= 1.5 for w in w_loud]
    assert any(cry_rated), "seed 0 is expected to contain vigorous crying"
    assert any(w.presence.cry_detected for w, c in zip(w_loud, cry_rated) if c)
    assert not any(w.presence.cry_detected for w in w_silent)

    rec = silent.root / "S001" / "R01"
    rows = truth_rows(rec)
    marked = [i for i, r in enumerate(rows) if r[SILENT_CRY]]
    assert marked == [i for i, r in enumerate(rows) if r["cry"] > 0] and 0 < len(marked) < len(rows)
    assert all(w_silent[i].label.items["cry"] > 0 for i in marked)  # the raters score it
    frames, t = gray_frames(rec)
    openness = mouth_openness(frames)
    window = np.floor(t / base.window_s).astype(int)
    visible = face_visible(rec, t) & (t >= 0) & (window < len(rows))
    seen = openness[np.isin(window, marked) & visible]
    calm = openness[~np.isin(window, marked) & visible]
    assert seen.size >= 20 and calm.size >= 20
    assert seen.mean() > 0.04 and seen.mean() > 5 * calm.mean(), (seen.mean(), calm.mean())


def test_cli_synth_writes_a_readable_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    rc = cli_synth(["--out", str(out), "--infants", "1", "--seed", "3", "--minutes", "0.4", "--video-size", "40",
                    "--container", "avi", "--audio-rates", "8000", "--no-ecg", "--quiet"])
    assert rc == 0
    ds = read_dataset(out)
    rec = ds.recordings[0]
    assert rec.video.path.suffix == ".avi" and rec.video.width == 40
    assert rec.audio.rate == 8000 and rec.ecg_path is None
    assert cli_synth(["--out", str(out), "--infants", "1", "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_add_synth_arguments_on_a_subparser_and_defaults_defined_once(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="neopain")
    sub = parser.add_subparsers(dest="cmd")
    add_synth_arguments(sub.add_parser("synth"))
    args = parser.parse_args(["synth", "--out", str(tmp_path), "--infants", "5", "--video-size", "96"])
    assert (args.infants, args.video_size, args.minutes, args.seed) == (5, 96, 3.0, 0)
    # Every option's CLI default is the options class's own: no option given = SynthOptions().
    bare = options_from_args(parser.parse_args(["synth", "--out", str(tmp_path)]))
    assert bare == SynthOptions()
    assert options_from_args(parser.parse_args(["synth", "--out", str(tmp_path), "--no-confounders"])).confounders \
        == SynthOptions().confounders.off()


# A bad value for each option: (arguments, what the one error line must name).
BAD_OPTIONS = [
    (["--audio-rates", "16k"], "--audio-rates"),
    (["--audio-rates", "4000"], "--audio-rates"),
    (["--skin-tone-mix", "I-II=1,purple=1"], "--skin-tone-mix: unknown kind 'purple'"),
    (["--skin-tone-mix", "I-II=-1"], "--skin-tone-mix: weight of 'I-II'"),
    (["--skin-tone-mix", "I-II=0"], "--skin-tone-mix: needs at least one kind"),
    (["--skin-tone-mix", "I-II"], "is not NAME=WEIGHT"),
    (["--preterm-fraction", "1.5"], "--preterm-fraction) must be in [0, 1], got 1.5"),
    (["--ga-range-weeks", "30"], "--ga-range-weeks must be two numbers"),
    (["--ga-range-weeks", "18,40"], "--ga-range-weeks) must be LOW,HIGH with 20"),
    (["--ga-range-weeks", "38,41"], "holds no preterm age"),
    (["--ga-range-weeks", "25,33", "--preterm-fraction", "0.5"], "holds no term age"),
    (["--lighting-level", "0"], "--lighting-level) must be between 0.1 and 3, got 0.0"),
    (["--camera-rotation-deg", "200"], "--camera-rotation-deg) must be between -180 and 180"),
    (["--camera-distance", "nan"], "--camera-distance) must be between 0.5 and 4, got nan"),
    (["--mic-snr-db", "90"], "--mic-snr-db) must be between -10 and 60 dB, got 90.0"),
    (["--monitor-mix", "intellivue=0,masimo=0"], "--monitor-mix: needs at least one kind"),
    (["--monitor-mix", "nellcor=1"], "unknown kind 'nellcor'; known: intellivue, masimo"),
    (["--neighbour-cries-per-min", "-1"], "--neighbour-cries-per-min) must be between 0 and 30"),
    (["--monitor-dropouts-per-min", "40"], "--monitor-dropouts-per-min) must be between 0 and 30"),
    (["--intubated-probability", "2"], "--intubated-probability) must be in [0, 1]"),
    (["--window-s", "120", "--minutes", "1"], "longer than the recording"),
    (["--infants", "0"], "--infants) must be >= 1, got 0"),
]


@pytest.mark.parametrize("argv, message", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                      message: str) -> None:
    out = tmp_path / "never"
    assert cli_synth(["--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neopain synth: error: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing written


def _corner_brightness(rec: Path) -> float:
    frames, _ = gray_frames(rec)
    s = frames.shape[1]
    return float(frames[:, : s // 8, : s // 8].mean())  # the cot in the top-left corner, far from face and limbs


def _infant_mask(rec: Path) -> np.ndarray:
    """Where the dark infant (V-VI skin, hair) is on the light cot in the first frame."""
    frame = gray_frames(rec)[0][0]
    return (frame < 0.6 * np.median(frame)).astype(np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_shifted_cohort_options_change_what_a_second_hospital_changes(tmp_path: Path) -> None:
    """A second hospital: all-preterm GA 25-30 and darkest skin (in both twins), then a dim room, a camera turned
    by 90 degrees and twice as far, a noisy microphone and Masimo monitors. Same seed, so each difference is the
    option's; the loader reads both cohorts."""
    base = SynthOptions(minutes=0.5, preterm_fraction=1.0, ga_range_weeks=(25.0, 30.0),
                        skin_tone_mix=(("V-VI", 1.0),), video=VideoOptions(size=48, fps=6.0))
    base = replace(base, confounders=replace(base.confounders, neighbour_cries_per_min=0.0))
    shifted = replace(base, video=replace(base.video, lighting_level=0.5, camera_rotation_deg=90.0, camera_distance=2.0),
                      audio=replace(base.audio, mic_snr_db=0.0), vitals=replace(base.vitals, monitor_mix=(("masimo", 1.0),)))
    a = synth_cohort(tmp_path / "a", 2, seed=4, options=base, progress=False)
    b = synth_cohort(tmp_path / "b", 2, seed=4, options=shifted, progress=False)
    for s in (*a.subjects, *b.subjects):
        assert s.skin_tone_group == "V-VI" and 25.0 <= s.gestational_age_weeks <= 30.0 and s.preterm
    ra, rb = a.root / "S001" / "R01", b.root / "S001" / "R01"
    assert (ra / "ratings.csv").read_bytes() == (rb / "ratings.csv").read_bytes()  # the same infants, seen otherwise

    assert 0.45 < _corner_brightness(rb) / _corner_brightness(ra) < 0.55
    mask_a, mask_b = _infant_mask(ra), _infant_mask(rb)
    assert 0.15 < mask_b.sum() / mask_a.sum() < 0.4, (mask_a.sum(), mask_b.sum())  # twice as far: a quarter the area
    size = mask_a.shape[0]

    def seen_by(angle: float) -> np.ndarray:  # the first twin's infant through a camera turned by ``angle``, 2x away
        return cv2.warpAffine(mask_a, cv2.getRotationMatrix2D((size / 2, size / 2), angle, 0.5), (size, size))

    overlap = {angle: _iou(seen_by(angle), mask_b) for angle in (0.0, 90.0, -90.0, 180.0)}
    assert overlap[90.0] > 0.6 and overlap[90.0] > max(overlap[a] for a in (0.0, -90.0, 180.0)) + 0.1, overlap

    def hiss(rec: Path) -> float:  # the median 50 ms RMS: the background between cries
        x, rate = load_audio(rec / "audio.wav")
        n = rate // 20
        return float(np.median(np.sqrt(np.mean(x[: x.size // n * n].reshape(-1, n) ** 2, axis=1))))

    assert 7.0 < hiss(rb) / hiss(ra) < 13.0  # 20 dB less SNR: ten times the hiss
    assert meta(ra)["monitor"] == "intellivue" and meta(rb)["monitor"] == "masimo"
    assert (ra / "ecg.npy").exists() and not (rb / "ecg.npy").exists()
    vb = read_vitals(rb / "vitals.csv")
    assert np.isnan(vb.rr_ms).all() and np.isfinite(vb.hr_bpm).sum() > 15  # pulse rate, no beats
    windows = load_windows(b.root)
    assert len(windows) == 6 and any(w.presence.vitals_valid for w in windows)
    assert all(w.vitals.beat_t_s.size == 0 and w.vitals.ecg is None for w in windows)
