"""Synthetic neonatal cohort in the dataset layout: ``neopain synth --out DIR --infants N --seed S``.

Why: real neonatal pain recordings cannot be shared, yet training, evaluation, export and the
appliance all need data with the real layout, real file formats, clock offsets between devices,
missing vitals, occlusions and two disagreeing raters. Everything is drawn from a seeded generator
(one independent stream per infant and modality), so the same seed gives byte-identical files and
changing one option (say video size) leaves the other modalities unchanged.

Two kinds of options beyond size: what a second hospital changes (skin-tone mix, preterm share and GA range,
lighting, camera roll and distance, microphone SNR, monitor mix), to make shifted test cohorts; and the
cross-modal confounders of a real NICU (``synth_confounders``: neighbour cries, motion artefacts, physiological
lag, silent cry, monitor dropouts), each switchable and marked per window in truth.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from models.data.layout import (AUDIO_FILE, FACE_FILE, GA_RANGE_WEEKS, RATINGS_FILE, RECORDING_FILE, SUBJECTS_FILE,
                                PRETERM_WEEKS, Subject)
from models.data.synth_audio import AudioOptions, make_cry_bursts, render_audio
from models.data.synth_confounders import CONFOUNDER_COLUMNS, ConfounderOptions, confounder_marks, draw_events
from models.data.synth_mix import Mix, draw_kind, format_mix, parse_mix, validate_mix
from models.data.synth_ratings import ITEM_NAMES, make_pain_scenario, make_raters, simulate_ratings, write_ratings
from models.data.synth_video import SKIN_TONES, VideoOptions, render_video, write_face_csv
from models.data.synth_vitals import MONITORS, VitalsOptions, render_vitals

TRUTH_FILE = "truth.csv"  # synthetic only: the hidden pain per window; readers ignore it
PRETERM_TOP_WEEKS = PRETERM_WEEKS - 0.15  # a preterm GA is drawn below this (it still rounds to < 37.0)
_EPOCH = datetime(2024, 1, 1, 8, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class SynthOptions:
    """Everything about a synthetic cohort except its size and seed."""

    minutes: float = 3.0
    window_s: float = 10.0
    recordings_per_infant: int = 1
    n_raters: int = 2
    preterm_fraction: float = 0.4
    ga_range_weeks: tuple[float, float] = (24.0, 41.9)  # preterm infants below PRETERM_WEEKS, term ones above
    skin_tone_mix: Mix = (("I-II", 0.45), ("III-IV", 0.35), ("V-VI", 0.2))  # weights of synth_video.SKIN_TONES
    intubated_probability: float = 0.25  # preterm 1.5 p, term p^2 (0 and 1 are exact)
    procedures_per_recording: float = 1.5
    video: VideoOptions = field(default_factory=VideoOptions)
    audio: AudioOptions = field(default_factory=AudioOptions)
    vitals: VitalsOptions = field(default_factory=VitalsOptions)
    confounders: ConfounderOptions = field(default_factory=ConfounderOptions)

    def __post_init__(self) -> None:
        """Validate what the infants are drawn from; each nested options class validates its own fields."""
        if not 0.0 <= self.preterm_fraction <= 1.0:  # NaN fails too
            raise ValueError(f"{_where('preterm_fraction')} must be in [0, 1], got {self.preterm_fraction!r}")
        if not 0.0 <= self.intubated_probability <= 1.0:
            raise ValueError(f"{_where('intubated_probability')} must be in [0, 1], got {self.intubated_probability!r}")
        lo, hi = self.ga_range_weeks
        if not GA_RANGE_WEEKS[0] <= lo < hi <= GA_RANGE_WEEKS[1]:
            raise ValueError(f"{_where('ga_range_weeks')} must be LOW,HIGH with {GA_RANGE_WEEKS[0]:g} <= LOW < HIGH <= "
                             f"{GA_RANGE_WEEKS[1]:g} weeks, got {lo!r},{hi!r}")
        if self.preterm_fraction > 0 and lo >= PRETERM_TOP_WEEKS:
            raise ValueError(f"{_where('preterm_fraction')} is {self.preterm_fraction:g} but "
                             f"{_where('ga_range_weeks')} {lo:g},{hi:g} holds no preterm age (below {PRETERM_TOP_WEEKS:g})")
        if self.preterm_fraction < 1 and hi < PRETERM_WEEKS:
            raise ValueError(f"{_where('preterm_fraction')} is {self.preterm_fraction:g} but "
                             f"{_where('ga_range_weeks')} {lo:g},{hi:g} holds no term age (from {PRETERM_WEEKS:g})")
        validate_mix(_where("skin_tone_mix"), self.skin_tone_mix, tuple(SKIN_TONES))
        if not 0.0 < self.minutes <= 24 * 60 or not 1.0 <= self.window_s <= 600.0:
            raise ValueError(f"{_where('minutes')} must be in (0, 1440] and {_where('window_s')} in [1, 600], got "
                             f"{self.minutes!r} and {self.window_s!r}")
        if self.window_s > self.minutes * 60.0:
            raise ValueError(f"{_where('window_s')} {self.window_s:g} s is longer than the recording "
                             f"({_where('minutes')} {self.minutes:g})")


@dataclass(frozen=True)
class CohortSummary:
    root: Path
    subjects: tuple[Subject, ...]
    recordings: tuple[Path, ...]
    n_windows: int


def _where(name: str) -> str:
    """A field's name as messages give it: the dataclass field and the ``neopain synth`` option."""
    return f"SynthOptions.{name} (--{name.replace('_', '-')})"


def make_subject(rng: np.random.Generator, index: int, options: SynthOptions) -> Subject:
    """Draw an infant: GA in ``ga_range_weeks`` (preterm with ``preterm_fraction``), sex, skin tone, intubation."""
    preterm = rng.random() < options.preterm_fraction
    lo, hi = options.ga_range_weeks
    ga = rng.uniform(lo, min(hi, PRETERM_TOP_WEEKS)) if preterm else rng.uniform(max(lo, PRETERM_WEEKS), hi)
    sex = "F" if rng.random() < 0.5 else "M"
    tone = draw_kind(rng, options.skin_tone_mix, tuple(SKIN_TONES))
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
    """Write one recording folder; returns its number of rated windows.

    Eleven independent streams: the first six as before the confounders existed (scenario, ratings, video,
    audio, vitals, clocks), then limbs, artefacts, neighbour cries, dropouts and the monitor kind, so that a
    switch changes what it is about and leaves the other draws alone.
    """
    directory.mkdir(parents=True, exist_ok=True)
    streams = [np.random.default_rng(s) for s in seeds.spawn(11)]
    s_scen, s_rate, s_video, s_audio, s_vitals, s_clock = streams[:6]
    s_limbs, s_artefact, s_neighbour, s_dropout, s_monitor = streams[6:]
    conf = options.confounders
    duration = options.minutes * 60.0
    scenario = make_pain_scenario(s_scen, duration, options.window_s, preterm=subject.preterm,
                                  procedures_per_recording=options.procedures_per_recording)
    write_ratings(directory / RATINGS_FILE, simulate_ratings(s_rate, scenario, raters))
    bursts = make_cry_bursts(s_scen, scenario, latency=conf.physiological_lag)

    # Each device starts a little before the first rated window and stops a little after the last.
    v_start = -float(np.round(s_clock.uniform(0.0, 0.5), 3))
    a_start = -float(np.round(s_clock.uniform(0.0, 1.0), 3))
    m_start = -float(np.round(s_clock.uniform(0.0, 2.0), 3))
    vo = options.video
    v_frames = int(round((duration - v_start + s_clock.uniform(0.0, 0.5)) * vo.fps))
    a_dur = duration - a_start + float(s_clock.uniform(0.0, 1.0))
    events = draw_events((s_limbs, s_artefact, s_neighbour, s_dropout), scenario, min(v_start, a_start, m_start),
                         duration + 1.0, conf)
    monitor = draw_kind(s_monitor, options.vitals.monitor_mix, MONITORS)

    visible = render_video(directory / f"video{vo.container}", scenario, s_video, skin_tone=subject.skin_tone_group
                           or "III-IV", intubated=subject.intubated, start_s=v_start,
                           duration_s=v_frames / vo.fps, cry_bursts=bursts, options=vo, preterm=subject.preterm,
                           limb_moves=events.limb_moves, silent_cry=conf.silent_cry)
    write_face_csv(directory / FACE_FILE, vo.fps, visible)
    rate, _ = render_audio(directory / AUDIO_FILE, s_audio, bursts=bursts, intubated=subject.intubated,
                           start_s=a_start, duration_s=a_dur, options=options.audio, neighbour=events.neighbour,
                           neighbour_rng=s_neighbour)
    a_samples = int(round(a_dur * rate))
    vit = render_vitals(directory, s_vitals, scenario, preterm=subject.preterm, start_s=m_start,
                        duration_s=duration - m_start + 1.0, options=options.vitals, monitor=monitor,
                        lag=conf.physiological_lag, artefacts=events.artefacts, artefact_rng=s_artefact,
                        dropouts=events.dropouts)

    meta = {
        "recording_id": directory.name,
        "subject_id": subject.subject_id,
        "start_time": start_time.isoformat().replace("+00:00", "Z"),
        "clock_offsets_s": {"video": v_start, "audio": a_start, "vitals": -vit.monitor_clock_at_zero},
        "durations_s": {"video": round(v_frames / vo.fps, 3), "audio": round(a_samples / rate, 4),
                        "vitals": round(vit.last_t - vit.first_t, 3)},
        "procedures": [{"name": p.name, "t_s": round(p.t_s, 2)} for p in scenario.procedures],
        "monitor": monitor,
        "synthetic": True,
        "synthetic_events": events.as_metadata(),
    }
    if vit.ecg_start is not None:
        meta["ecg"] = {"file": "ecg.npy", "rate_hz": 250.0, "start_s": round(vit.ecg_start, 3)}
    (directory / RECORDING_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    frame_t = v_start + np.arange(v_frames) / vo.fps
    win = scenario.window_index(frame_t)
    vis_frac = np.bincount(win, weights=visible, minlength=scenario.n_windows) / np.maximum(
        np.bincount(win, minlength=scenario.n_windows), 1)
    latent = scenario.latent_per_window
    marks = confounder_marks(scenario, events, intubated=subject.intubated, options=conf, hr_drive=vit.hr_drive,
                             numerics_t=vit.numerics_t, hr_present=vit.hr_present)
    with (directory / TRUTH_FILE).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["window_start_s", "window_end_s", "latent_pain", *ITEM_NAMES, "total", "face_visible_frac",
                    "cry_audible", *CONFOUNDER_COLUMNS])
        for i in range(scenario.n_windows):
            s0 = float(scenario.window_starts[i])
            items = scenario.items[i]
            w.writerow([f"{s0:g}", f"{s0 + options.window_s:g}", f"{latent[i]:.4f}", *items.tolist(),
                        int(items.sum()), f"{vis_frac[i]:.3f}", int(items[1] > 0 and not subject.intubated),
                        *(int(marks[c][i]) for c in CONFOUNDER_COLUMNS)])
    return scenario.n_windows


def _check_target(root: Path, n_infants: int, overwrite: bool) -> None:
    if n_infants < 1:
        raise ValueError(f"n_infants (--infants) must be >= 1, got {n_infants}")
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty (pass overwrite=True / --overwrite to write over it)")


def synth_cohort(root: Path | str, n_infants: int, seed: int = 0, options: SynthOptions | None = None, *,
                 progress: bool = True, overwrite: bool = False) -> CohortSummary:
    """Write a synthetic cohort of ``n_infants`` into ``root`` in the dataset layout (docs/dataset.md)."""
    options = options or SynthOptions()
    if options.video.container not in (".mp4", ".avi"):
        raise ValueError(f"video container must be .mp4 or .avi, got {options.video.container!r}")
    root = Path(root)
    _check_target(root, n_infants, overwrite)
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


def _pair(text: str, flag: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"{flag} must be two numbers LOW,HIGH, got {text!r}") from None
    return lo, hi


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``neopain synth`` (the lead's CLI adds them to its sub-parser). Defaults: the options' own."""
    d = SynthOptions()
    c = d.confounders
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

    shift = parser.add_argument_group("a second hospital (shifted cohorts, docs/dataset.md)")
    shift.add_argument("--skin-tone-mix", default=format_mix(d.skin_tone_mix),
                       help=f"weights of the skin tone groups {', '.join(SKIN_TONES)} (default %(default)s)")
    shift.add_argument("--preterm-fraction", type=float, default=d.preterm_fraction,
                       help="share of preterm infants (default %(default)s)")
    shift.add_argument("--ga-range-weeks", default=",".join(f"{w:g}" for w in d.ga_range_weeks),
                       help=f"LOW,HIGH gestational age in weeks; preterm below {PRETERM_WEEKS:g} (default %(default)s)")
    shift.add_argument("--lighting-level", type=float, default=d.video.lighting_level,
                       help="room light: scales every brightness (default %(default)s; a dim unit 0.4)")
    shift.add_argument("--camera-rotation-deg", type=float, default=d.video.camera_rotation_deg,
                       help="camera roll against the cot, degrees (default %(default)s)")
    shift.add_argument("--camera-distance", type=float, default=d.video.camera_distance,
                       help="camera distance relative to face-framed; 2 = face at half size (default %(default)s)")
    shift.add_argument("--mic-snr-db", type=float, default=d.audio.mic_snr_db,
                       help="a vigorous cry over the incubator hiss, dB (default %(default)s)")
    shift.add_argument("--monitor-mix", default=format_mix(d.vitals.monitor_mix),
                       help=f"weights of the monitor kinds {', '.join(MONITORS)} (default %(default)s)")

    conf = parser.add_argument_group("cross-modal confounders (all on by default; docs/dataset.md)")
    conf.add_argument("--neighbour-cries-per-min", type=float, default=c.neighbour_cries_per_min,
                      help="another infant's cry bouts heard in an open bay; 0 = single room (default %(default)s)")
    conf.add_argument("--monitor-dropouts-per-min", type=float, default=c.monitor_dropouts_per_min,
                      help="monitor link lost long enough to invalidate vitals windows (default %(default)s)")
    conf.add_argument("--no-motion-artefacts", action="store_true",
                      help="no SpO2/HR artefacts during the limb movements the camera sees")
    conf.add_argument("--no-physiological-lag", action="store_true",
                      help="vitals follow the behaviour at once; the cry starts with the grimace")
    conf.add_argument("--no-silent-cry", action="store_true",
                      help="an intubated infant's rated cry does not show on its face")
    conf.add_argument("--no-confounders", action="store_true", help="all of the above off: the clean cohort")
    return parser


def options_from_args(args: argparse.Namespace) -> SynthOptions:
    """SynthOptions from parsed arguments; a bad value is a ValueError naming the option and the value."""
    d = SynthOptions()
    try:
        rates = tuple(int(r) for r in str(args.audio_rates).split(",") if r.strip())
    except ValueError:
        raise ValueError(f"--audio-rates must be integers separated by commas, got {args.audio_rates!r}") from None
    if not rates or min(rates) < 8000:
        raise ValueError(f"--audio-rates needs rates >= 8000 Hz, got {args.audio_rates!r}")
    confounders = replace(d.confounders, neighbour_cries_per_min=args.neighbour_cries_per_min,
                          monitor_dropouts_per_min=args.monitor_dropouts_per_min,
                          motion_artefacts=not args.no_motion_artefacts,
                          physiological_lag=not args.no_physiological_lag, silent_cry=not args.no_silent_cry)
    if args.no_confounders:
        confounders = confounders.off()
    return replace(
        d, minutes=args.minutes, window_s=args.window_s, n_raters=args.raters,
        recordings_per_infant=args.recordings, intubated_probability=args.intubated_probability,
        preterm_fraction=args.preterm_fraction, ga_range_weeks=_pair(args.ga_range_weeks, "--ga-range-weeks"),
        skin_tone_mix=parse_mix(args.skin_tone_mix, "--skin-tone-mix", tuple(SKIN_TONES)),
        video=replace(d.video, size=args.video_size, fps=args.fps, container="." + args.container,
                      hand_occlusions_per_min=args.occlusions_per_min, lighting_level=args.lighting_level,
                      camera_rotation_deg=args.camera_rotation_deg, camera_distance=args.camera_distance),
        audio=replace(d.audio, rates=rates, mic_snr_db=args.mic_snr_db),
        vitals=replace(d.vitals, write_ecg=not args.no_ecg,
                       monitor_mix=parse_mix(args.monitor_mix, "--monitor-mix", MONITORS)),
        confounders=confounders,
    )


def run_synth(args: argparse.Namespace) -> int:
    """Run ``neopain synth`` from parsed arguments; returns the process exit code (2: a bad option or --out)."""
    try:
        options = options_from_args(args)
        _check_target(args.out, args.infants, args.overwrite)
    except (ValueError, FileExistsError) as exc:
        print(f"neopain synth: error: {exc}", file=sys.stderr)
        return 2
    summary = synth_cohort(args.out, args.infants, args.seed, options, progress=not args.quiet,
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
