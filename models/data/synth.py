"""Synthetic neonatal cohort in the dataset layout: ``neopain synth --out DIR --infants N --seed S``.

Why: real neonatal pain recordings cannot be shared, yet training, evaluation, export and the
appliance all need data with the real layout, real file formats, clock offsets between devices,
missing vitals, occlusions and two disagreeing raters. Everything is drawn from a seeded generator
(one independent stream per infant and modality), so the same seed gives byte-identical files and
changing one option (say video size) leaves the other modalities unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from models.data.layout import (AUDIO_FILE, FACE_FILE, RATINGS_FILE, RECORDING_FILE, SUBJECTS_FILE,
                                PRETERM_WEEKS, Subject)
from models.data.synth_audio import AudioOptions, make_cry_bursts, render_audio
from models.data.synth_ratings import ITEM_NAMES, make_pain_scenario, make_raters, simulate_ratings, write_ratings
from models.data.synth_video import SKIN_TONES, VideoOptions, render_video, write_face_csv
from models.data.synth_vitals import VitalsOptions, render_vitals

TRUTH_FILE = "truth.csv"  # synthetic only: the hidden pain per window; readers ignore it
_EPOCH = datetime(2024, 1, 1, 8, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SynthOptions:
    """Everything about a synthetic cohort except its size and seed."""

    minutes: float = 3.0
    window_s: float = 10.0
    recordings_per_infant: int = 1
    n_raters: int = 2
    preterm_fraction: float = 0.4
    intubated_probability: float = 0.25  # preterm 1.5 p, term p^2 (0 and 1 are exact)
    procedures_per_recording: float = 1.5
    video: VideoOptions = field(default_factory=VideoOptions)
    audio: AudioOptions = field(default_factory=AudioOptions)
    vitals: VitalsOptions = field(default_factory=VitalsOptions)


@dataclass(frozen=True)
class CohortSummary:
    root: Path
    subjects: tuple[Subject, ...]
    recordings: tuple[Path, ...]
    n_windows: int


def make_subject(rng: np.random.Generator, index: int, options: SynthOptions) -> Subject:
    """Draw an infant: GA 24-41 weeks (preterm with ``preterm_fraction``), sex, skin tone, intubation."""
    preterm = rng.random() < options.preterm_fraction
    ga = rng.uniform(24.0, PRETERM_WEEKS - 0.15) if preterm else rng.uniform(PRETERM_WEEKS, 41.9)
    sex = "F" if rng.random() < 0.5 else "M"
    tone = list(SKIN_TONES)[int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
    p = options.intubated_probability  # preterm infants are intubated more often: 1.5 p vs p^2
    p_intubated = 1.5 * p if preterm else p * p
    intubated = bool(rng.random() < min(p_intubated, 1.0))
    return Subject(f"S{index + 1:03d}", round(float(ga), 1), sex, intubated, tone)


def _write_subjects(root: Path, subjects: Sequence[Subject]) -> None:
    with (root / SUBJECTS_FILE).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["subject_id", "gestational_age_weeks", "sex", "skin_tone_group", "intubated"])
        for s in subjects:
            w.writerow([s.subject_id, f"{s.gestational_age_weeks:.1f}", s.sex, s.skin_tone_group or "",
                        int(s.intubated)])


def synth_recording(directory: Path, subject: Subject, seeds: np.random.SeedSequence, raters: dict[str, float],
                    start_time: datetime, options: SynthOptions) -> int:
    """Write one recording folder; returns its number of rated windows."""
    directory.mkdir(parents=True, exist_ok=True)
    s_scen, s_rate, s_video, s_audio, s_vitals, s_clock = (np.random.default_rng(s) for s in seeds.spawn(6))
    duration = options.minutes * 60.0
    scenario = make_pain_scenario(s_scen, duration, options.window_s, preterm=subject.preterm,
                                  procedures_per_recording=options.procedures_per_recording)
    write_ratings(directory / RATINGS_FILE, simulate_ratings(s_rate, scenario, raters))
    bursts = make_cry_bursts(s_scen, scenario)

    # Each device starts a little before the first rated window and stops a little after the last.
    v_start = -float(np.round(s_clock.uniform(0.0, 0.5), 3))
    a_start = -float(np.round(s_clock.uniform(0.0, 1.0), 3))
    m_start = -float(np.round(s_clock.uniform(0.0, 2.0), 3))
    vo = options.video
    v_frames = int(round((duration - v_start + s_clock.uniform(0.0, 0.5)) * vo.fps))
    visible = render_video(directory / f"video{vo.container}", scenario, s_video, skin_tone=subject.skin_tone_group
                           or "III-IV", intubated=subject.intubated, start_s=v_start,
                           duration_s=v_frames / vo.fps, cry_bursts=bursts, options=vo, preterm=subject.preterm)
    write_face_csv(directory / FACE_FILE, vo.fps, visible)
    a_dur = duration - a_start + float(s_clock.uniform(0.0, 1.0))
    rate, _ = render_audio(directory / AUDIO_FILE, s_audio, bursts=bursts, intubated=subject.intubated,
                           start_s=a_start, duration_s=a_dur, options=options.audio)
    a_samples = int(round(a_dur * rate))
    vit = render_vitals(directory, s_vitals, scenario, preterm=subject.preterm, start_s=m_start,
                        duration_s=duration - m_start + 1.0, options=options.vitals)

    meta = {
        "recording_id": directory.name,
        "subject_id": subject.subject_id,
        "start_time": start_time.isoformat().replace("+00:00", "Z"),
        "clock_offsets_s": {"video": v_start, "audio": a_start, "vitals": -vit.monitor_clock_at_zero},
        "durations_s": {"video": round(v_frames / vo.fps, 3), "audio": round(a_samples / rate, 4),
                        "vitals": round(vit.last_t - vit.first_t, 3)},
        "procedures": [{"name": p.name, "t_s": round(p.t_s, 2)} for p in scenario.procedures],
        "synthetic": True,
    }
    if vit.ecg_start is not None:
        meta["ecg"] = {"file": "ecg.npy", "rate_hz": 250.0, "start_s": round(vit.ecg_start, 3)}
    (directory / RECORDING_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    frame_t = v_start + np.arange(v_frames) / vo.fps
    win = scenario.window_index(frame_t)
    vis_frac = np.bincount(win, weights=visible, minlength=scenario.n_windows) / np.maximum(
        np.bincount(win, minlength=scenario.n_windows), 1)
    latent = scenario.latent_per_window
    with (directory / TRUTH_FILE).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["window_start_s", "window_end_s", "latent_pain", *ITEM_NAMES, "total", "face_visible_frac",
                    "cry_audible"])
        for i in range(scenario.n_windows):
            s0 = float(scenario.window_starts[i])
            items = scenario.items[i]
            w.writerow([f"{s0:g}", f"{s0 + options.window_s:g}", f"{latent[i]:.4f}", *items.tolist(),
                        int(items.sum()), f"{vis_frac[i]:.3f}", int(items[1] > 0 and not subject.intubated)])
    return scenario.n_windows


def synth_cohort(root: Path | str, n_infants: int, seed: int = 0, options: SynthOptions | None = None, *,
                 progress: bool = True, overwrite: bool = False) -> CohortSummary:
    """Write a synthetic cohort of ``n_infants`` into ``root`` in the dataset layout (docs/dataset.md)."""
    if n_infants < 1:
        raise ValueError(f"n_infants must be >= 1, got {n_infants}")
    options = options or SynthOptions()
    if options.video.container not in (".mp4", ".avi"):
        raise ValueError(f"video container must be .mp4 or .avi, got {options.video.container!r}")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty (pass overwrite=True / --overwrite to write over it)")
    root.mkdir(parents=True, exist_ok=True)

    cohort = np.random.SeedSequence([seed, 0])
    raters = make_raters(np.random.default_rng(cohort), options.n_raters)
    subjects, recordings, n_windows = [], [], 0
    for i in tqdm(range(n_infants), desc="synth infants", unit="infant", disable=not progress):
        infant = np.random.SeedSequence([seed, 1, i])
        s_subject, *s_recs = infant.spawn(1 + options.recordings_per_infant)
        subject = make_subject(np.random.default_rng(s_subject), i, options)
        subjects.append(subject)
        for r, s_rec in enumerate(s_recs):
            start = _EPOCH + timedelta(days=i, hours=2 * r)
            directory = root / subject.subject_id / f"R{r + 1:02d}"
            n_windows += synth_recording(directory, subject, s_rec, raters, start, options)
            recordings.append(directory)
    _write_subjects(root, subjects)
    return CohortSummary(root, tuple(subjects), tuple(recordings), n_windows)


# --------------------------------------------------------------------------------------------- CLI


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``neopain synth`` (the lead's CLI adds them to its sub-parser)."""
    d = SynthOptions()
    parser.add_argument("--out", type=Path, required=True, help="dataset root to create")
    parser.add_argument("--infants", type=int, default=8, help="number of infants (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes")
    parser.add_argument("--minutes", type=float, default=d.minutes, help="length of each recording")
    parser.add_argument("--video-size", type=int, default=d.video.size, help="square frame size in pixels")
    parser.add_argument("--fps", type=float, default=d.video.fps, help="video frame rate")
    parser.add_argument("--container", choices=("mp4", "avi"), default=d.video.container[1:])
    parser.add_argument("--window-s", type=float, default=d.window_s, help="rated window length")
    parser.add_argument("--raters", type=int, default=d.n_raters, help="simulated raters per window")
    parser.add_argument("--recordings", type=int, default=d.recordings_per_infant, help="recordings per infant")
    parser.add_argument("--audio-rates", default=",".join(str(r) for r in d.audio.rates),
                        help="comma-separated sample rates, one drawn per recording")
    parser.add_argument("--occlusions-per-min", type=float, default=d.video.hand_occlusions_per_min,
                        help="rate of hand occlusions of the face")
    parser.add_argument("--intubated-probability", type=float, default=d.intubated_probability)
    parser.add_argument("--no-ecg", action="store_true", help="do not write ecg.npy")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def options_from_args(args: argparse.Namespace) -> SynthOptions:
    d = SynthOptions()
    try:
        rates = tuple(int(r) for r in str(args.audio_rates).split(",") if r.strip())
    except ValueError:
        raise ValueError(f"--audio-rates must be integers separated by commas, got {args.audio_rates!r}") from None
    if not rates or min(rates) < 8000:
        raise ValueError(f"--audio-rates needs rates >= 8000 Hz, got {args.audio_rates!r}")
    return replace(
        d, minutes=args.minutes, window_s=args.window_s, n_raters=args.raters,
        recordings_per_infant=args.recordings, intubated_probability=args.intubated_probability,
        video=replace(d.video, size=args.video_size, fps=args.fps, container="." + args.container,
                      hand_occlusions_per_min=args.occlusions_per_min),
        audio=replace(d.audio, rates=rates),
        vitals=replace(d.vitals, write_ecg=not args.no_ecg),
    )


def run_synth(args: argparse.Namespace) -> int:
    """Run ``neopain synth`` from parsed arguments; returns the process exit code."""
    summary = synth_cohort(args.out, args.infants, args.seed, options_from_args(args), progress=not args.quiet,
                           overwrite=args.overwrite)
    print(f"wrote {len(summary.subjects)} infants, {len(summary.recordings)} recordings, "
          f"{summary.n_windows} rated windows to {summary.root}")
    return 0


def cli_synth(argv: Sequence[str] | None = None) -> int:
    """``neopain synth`` as a function of its argument list (for tests and ``python -m``)."""
    parser = add_synth_arguments(argparse.ArgumentParser(prog="neopain synth", description=__doc__.split("\n")[0]))
    return run_synth(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(cli_synth())
