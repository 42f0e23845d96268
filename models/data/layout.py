"""On-disk layout of a neopain dataset and a reader that validates it.

Why a validating reader: a pain dataset is assembled from devices on different clocks (camera, sound
card, bedside monitor) and from hand-typed rating sheets. Mistakes there (a shifted clock, a total that
does not equal its items, a truncated video) silently poison training, so every file is checked once
here and every problem is a :class:`DatasetError` that names the file and the line or field.

Layout (see docs/dataset.md)::

    root/subjects.csv
    root/<subject_id>/<recording_id>/video.(mp4|avi|...)   any OpenCV-readable video; fps from the file
    root/<subject_id>/<recording_id>/audio.wav             any rate, mono or stereo
    root/<subject_id>/<recording_id>/vitals.csv            t_s,hr_bpm,spo2_pct,rr_ms (empty cells allowed)
    root/<subject_id>/<recording_id>/ecg.npy | ecg.csv     optional, 250 Hz, on the vitals clock
    root/<subject_id>/<recording_id>/ratings.csv           NIPS per rated window and rater
    root/<subject_id>/<recording_id>/recording.json        start time, clock offsets, durations
    root/<subject_id>/<recording_id>/face.csv              optional: t_s,visible (video clock)

Clock convention: a time ``t`` read from a modality's file maps to the recording clock as
``t + clock_offsets_s[modality]``. Ratings are on the recording clock.
"""

from __future__ import annotations

import csv
import json
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from models.vocabulary import MODALITIES, NIPS_ITEMS

SUBJECTS_FILE = "subjects.csv"
AUDIO_FILE = "audio.wav"
VITALS_FILE = "vitals.csv"
RATINGS_FILE = "ratings.csv"
RECORDING_FILE = "recording.json"
FACE_FILE = "face.csv"
ECG_FILES = ("ecg.npy", "ecg.csv")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm")
ECG_RATE_HZ = 250.0

SUBJECT_COLUMNS = ("subject_id", "gestational_age_weeks", "sex", "intubated")
VITALS_COLUMNS = ("t_s", "hr_bpm", "spo2_pct", "rr_ms")
RATING_COLUMNS = ("window_start_s", "window_end_s", "rater_id") + tuple(n for n, _ in NIPS_ITEMS) + ("total",)
SEXES = ("M", "F", "U")
PRETERM_WEEKS = 37.0
GA_RANGE_WEEKS = (20.0, 45.0)  # plausible gestational ages (weeks) in subjects.csv
# Tolerance when the durations declared in recording.json are compared with the files.
DURATION_TOLERANCE_S = 1.0


class DatasetError(ValueError):
    """A dataset problem, with the file and (where known) the line or field it was found at."""

    def __init__(self, path: Path | str, message: str, *, line: int | None = None, field: str | None = None):
        self.path = Path(path)
        self.line = line
        self.field = field
        where = str(self.path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Subject:
    """One infant: the covariates a pain model is stratified or evaluated by."""

    subject_id: str
    gestational_age_weeks: float
    sex: str
    intubated: bool
    skin_tone_group: str | None = None

    @property
    def preterm(self) -> bool:
        return self.gestational_age_weeks < PRETERM_WEEKS


@dataclass(frozen=True)
class Rating:
    """One rater's NIPS for one window (items in NIPS order, total = sum checked on read)."""

    window_start_s: float
    window_end_s: float
    rater_id: str
    items: dict[str, int]
    total: int


@dataclass(frozen=True)
class RatedWindow:
    """A window on the recording clock and every rater's score of it."""

    start_s: float
    end_s: float
    ratings: tuple[Rating, ...]


@dataclass(frozen=True)
class VitalsTable:
    """vitals.csv as arrays; NaN marks an empty cell (sensor off, artifact, or not that row's kind).

    Rows with ``rr_ms`` are R-peaks (``t_s`` = beat time, ``rr_ms`` = interval ending at that beat);
    rows with ``hr_bpm`` / ``spo2_pct`` are monitor numerics. Times are on the vitals clock.
    """

    t_s: np.ndarray
    hr_bpm: np.ndarray
    spo2_pct: np.ndarray
    rr_ms: np.ndarray


@dataclass(frozen=True)
class EcgTrace:
    """A single ECG lead: samples at ``rate_hz`` starting at ``start_s`` on the vitals clock."""

    samples: np.ndarray
    rate_hz: float
    start_s: float


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.fps


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate


@dataclass(frozen=True)
class RecordingMeta:
    """recording.json: identity, start time, per-modality clock offsets and durations."""

    recording_id: str
    subject_id: str
    start_time: str
    clock_offsets_s: dict[str, float]
    durations_s: dict[str, float]
    ecg_start_s: float | None = None
    ecg_rate_hz: float = ECG_RATE_HZ
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recording:
    """A validated recording: its paths, metadata, rated windows and media probes."""

    subject: Subject
    directory: Path
    meta: RecordingMeta
    video: VideoInfo
    audio: AudioInfo
    windows: tuple[RatedWindow, ...]

    @property
    def recording_id(self) -> str:
        return self.meta.recording_id

    @property
    def vitals_path(self) -> Path:
        return self.directory / VITALS_FILE

    @property
    def face_path(self) -> Path | None:
        p = self.directory / FACE_FILE
        return p if p.exists() else None

    @property
    def ecg_path(self) -> Path | None:
        for name in ECG_FILES:
            if (self.directory / name).exists():
                return self.directory / name
        return None

    def offset(self, modality: str) -> float:
        return self.meta.clock_offsets_s.get(modality, 0.0)


@dataclass(frozen=True)
class Dataset:
    root: Path
    subjects: dict[str, Subject]
    recordings: tuple[Recording, ...]


# --------------------------------------------------------------------------------------------- helpers


def _read_csv(path: Path, required: Iterable[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Rows of a CSV with their 1-based file line numbers (header = line 1)."""
    if not path.is_file():
        raise DatasetError(path, "file is missing")
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DatasetError(path, f"missing column(s) {missing}; header is {header}", line=1)
            reader.fieldnames = header
            rows = []
            for row in reader:
                if None in row:  # more cells than header columns
                    raise DatasetError(path, "more cells than header columns", line=reader.line_num)
                rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    except UnicodeDecodeError as exc:
        raise DatasetError(path, f"not UTF-8 text ({exc})") from None
    return header, rows


def _float(path: Path, line: int, name: str, text: str, *, allow_empty: bool = False) -> float:
    if text == "":
        if allow_empty:
            return math.nan
        raise DatasetError(path, "empty cell", line=line, field=name)
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(path, f"not a number: {text!r}", line=line, field=name) from None
    if not math.isfinite(value):
        raise DatasetError(path, f"not finite: {text!r}", line=line, field=name)
    return value


def _int(path: Path, line: int, name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise DatasetError(path, f"not an integer: {text!r}", line=line, field=name) from None


# --------------------------------------------------------------------------------------------- readers


def read_subjects(path: Path) -> dict[str, Subject]:
    """subjects.csv -> {subject_id: Subject}; checks ranges and duplicates."""
    path = Path(path)
    _, rows = _read_csv(path, SUBJECT_COLUMNS)
    subjects: dict[str, Subject] = {}
    for line, row in rows:
        sid = row["subject_id"]
        if not sid or "/" in sid or sid.startswith("."):
            raise DatasetError(path, f"bad subject_id {sid!r}", line=line, field="subject_id")
        if sid in subjects:
            raise DatasetError(path, f"duplicate subject_id {sid!r}", line=line, field="subject_id")
        ga = _float(path, line, "gestational_age_weeks", row["gestational_age_weeks"])
        if not GA_RANGE_WEEKS[0] <= ga <= GA_RANGE_WEEKS[1]:
            raise DatasetError(path, f"{ga} outside {GA_RANGE_WEEKS[0]:g}-{GA_RANGE_WEEKS[1]:g} weeks", line=line,
                               field="gestational_age_weeks")
        sex = row["sex"].upper()
        if sex not in SEXES:
            raise DatasetError(path, f"{row['sex']!r} not one of {SEXES}", line=line, field="sex")
        if row["intubated"] not in ("0", "1"):
            raise DatasetError(path, f"{row['intubated']!r} is not 0 or 1", line=line, field="intubated")
        tone = row.get("skin_tone_group") or None
        subjects[sid] = Subject(sid, ga, sex, row["intubated"] == "1", tone)
    if not subjects:
        raise DatasetError(path, "no subjects")
    return subjects


def read_ratings(path: Path) -> tuple[RatedWindow, ...]:
    """ratings.csv -> rated windows sorted by start, each item range- and total-checked."""
    path = Path(path)
    _, rows = _read_csv(path, RATING_COLUMNS)
    by_window: dict[tuple[float, float], list[Rating]] = {}
    for line, row in rows:
        start = _float(path, line, "window_start_s", row["window_start_s"])
        end = _float(path, line, "window_end_s", row["window_end_s"])
        if end <= start:
            raise DatasetError(path, f"window_end_s {end} <= window_start_s {start}", line=line,
                               field="window_end_s")
        rater = row["rater_id"]
        if not rater:
            raise DatasetError(path, "empty rater_id", line=line, field="rater_id")
        items: dict[str, int] = {}
        for name, classes in NIPS_ITEMS:
            value = _int(path, line, name, row[name])
            if not 0 <= value < classes:
                raise DatasetError(path, f"{value} outside NIPS range 0-{classes - 1}", line=line, field=name)
            items[name] = value
        total = _int(path, line, "total", row["total"])
        if total != sum(items.values()):
            raise DatasetError(path, f"total {total} != sum of items {sum(items.values())}", line=line,
                               field="total")
        ratings = by_window.setdefault((start, end), [])
        if any(r.rater_id == rater for r in ratings):
            raise DatasetError(path, f"rater {rater!r} rated window {start}-{end} twice", line=line,
                               field="rater_id")
        ratings.append(Rating(start, end, rater, items, total))
    if not by_window:
        raise DatasetError(path, "no rated windows")
    return tuple(RatedWindow(s, e, tuple(r)) for (s, e), r in sorted(by_window.items()))


def read_vitals(path: Path) -> VitalsTable:
    """vitals.csv -> arrays (NaN for empty cells); times must not go backwards."""
    path = Path(path)
    _, rows = _read_csv(path, VITALS_COLUMNS)
    if not rows:
        raise DatasetError(path, "no rows")
    data = np.empty((len(rows), 4), dtype=np.float64)
    ranges = {"hr_bpm": (20.0, 300.0), "spo2_pct": (0.0, 100.0), "rr_ms": (150.0, 3000.0)}
    for i, (line, row) in enumerate(rows):
        data[i, 0] = _float(path, line, "t_s", row["t_s"])
        for j, name in enumerate(VITALS_COLUMNS[1:], start=1):
            value = _float(path, line, name, row[name], allow_empty=True)
            lo, hi = ranges[name]
            if not math.isnan(value) and not lo <= value <= hi:
                raise DatasetError(path, f"{value} outside plausible range {lo}-{hi}", line=line, field=name)
            data[i, j] = value
        if i and data[i, 0] < data[i - 1, 0]:
            raise DatasetError(path, "t_s goes backwards", line=line, field="t_s")
    return VitalsTable(data[:, 0], data[:, 1], data[:, 2], data[:, 3])


def read_ecg(path: Path, meta: RecordingMeta) -> EcgTrace:
    """ecg.npy (start from recording.json ``ecg.start_s``) or ecg.csv (t_s, ecg_mv)."""
    path = Path(path)
    if path.suffix == ".npy":
        try:
            samples = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DatasetError(path, f"unreadable .npy ({exc})") from None
        if samples.ndim != 1:
            raise DatasetError(path, f"expected a 1-D lead, got shape {samples.shape}")
        if meta.ecg_start_s is None:
            raise DatasetError(path, "ecg.npy needs ecg.start_s in recording.json", field="ecg.start_s")
        return EcgTrace(samples.astype(np.float32), meta.ecg_rate_hz, meta.ecg_start_s)
    _, rows = _read_csv(path, ("t_s", "ecg_mv"))
    if len(rows) < 2:
        raise DatasetError(path, "fewer than 2 samples")
    t = np.array([_float(path, ln, "t_s", r["t_s"]) for ln, r in rows])
    v = np.array([_float(path, ln, "ecg_mv", r["ecg_mv"]) for ln, r in rows], dtype=np.float32)
    rate = 1.0 / float(np.median(np.diff(t)))
    if abs(rate - ECG_RATE_HZ) > 5.0:
        raise DatasetError(path, f"sample rate {rate:.1f} Hz, expected {ECG_RATE_HZ:.0f} Hz", field="t_s")
    return EcgTrace(v, rate, float(t[0]))


def read_recording_meta(path: Path) -> RecordingMeta:
    """recording.json -> RecordingMeta, with every required key checked."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(path, "top level must be an object")
    for key in ("recording_id", "subject_id", "start_time", "clock_offsets_s", "durations_s"):
        if key not in data:
            raise DatasetError(path, "required key is missing", field=key)
    for key in ("clock_offsets_s", "durations_s"):
        value = data[key]
        if not isinstance(value, dict):
            raise DatasetError(path, "must be an object of modality -> seconds", field=key)
        for mod, sec in value.items():
            if not isinstance(sec, (int, float)) or not math.isfinite(sec):
                raise DatasetError(path, f"{sec!r} is not a number of seconds", field=f"{key}.{mod}")
    for mod in MODALITIES:
        if mod not in data["durations_s"]:
            raise DatasetError(path, "required duration is missing", field=f"durations_s.{mod}")
    ecg = data.get("ecg") or {}
    known = {"recording_id", "subject_id", "start_time", "clock_offsets_s", "durations_s", "ecg"}
    return RecordingMeta(
        recording_id=str(data["recording_id"]),
        subject_id=str(data["subject_id"]),
        start_time=str(data["start_time"]),
        clock_offsets_s={k: float(v) for k, v in data["clock_offsets_s"].items()},
        durations_s={k: float(v) for k, v in data["durations_s"].items()},
        ecg_start_s=float(ecg["start_s"]) if "start_s" in ecg else None,
        ecg_rate_hz=float(ecg.get("rate_hz", ECG_RATE_HZ)),
        extra={k: v for k, v in data.items() if k not in known},
    )


def find_video(directory: Path) -> Path:
    """The recording's video.<ext>; exactly one is allowed."""
    found = sorted(p for p in directory.glob("video.*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not found:
        raise DatasetError(directory / "video.*", f"file is missing (any of {', '.join(VIDEO_SUFFIXES)})")
    if len(found) > 1:
        raise DatasetError(directory, f"more than one video file: {[p.name for p in found]}")
    return found[0]


def probe_video(path: Path) -> VideoInfo:
    """Open a video with OpenCV and read its fps, size and frame count (the first frame must decode)."""
    import cv2  # local: the layout module is importable where OpenCV is absent

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DatasetError(path, "OpenCV cannot open this video")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise DatasetError(path, "OpenCV cannot decode a frame")
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if not (fps > 0 and math.isfinite(fps)):
        raise DatasetError(path, f"no usable frame rate in the file ({fps})", field="fps")
    if count <= 0:
        raise DatasetError(path, "frame count unknown or zero", field="frame_count")
    return VideoInfo(Path(path), fps, count, frame.shape[1], frame.shape[0])


def probe_audio(path: Path) -> AudioInfo:
    """Read a WAV header (PCM or float) without loading the samples."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file is missing")
    try:
        with wave.open(str(path), "rb") as wf:
            return AudioInfo(path, wf.getframerate(), wf.getnchannels(), wf.getnframes())
    except (wave.Error, EOFError):
        pass  # e.g. IEEE-float WAV, which the wave module refuses; scipy reads those
    try:
        from scipy.io import wavfile

        rate, data = wavfile.read(path, mmap=True)
    except (ValueError, OSError) as exc:
        raise DatasetError(path, f"unreadable WAV ({exc})") from None
    channels = 1 if data.ndim == 1 else data.shape[1]
    return AudioInfo(path, int(rate), channels, int(data.shape[0]))


def load_audio(path: Path) -> tuple[np.ndarray, int]:
    """Whole WAV as float32 mono in [-1, 1] and its native rate (resampling is the model's job)."""
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError) as exc:
        raise DatasetError(path, f"unreadable WAV ({exc})") from None
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        audio = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    else:
        audio = data.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return audio, int(rate)


# --------------------------------------------------------------------------------------------- checks


def _span(rec_start: float, rec_end: float, windows: tuple[RatedWindow, ...]) -> float:
    """Seconds of the rated windows covered by [rec_start, rec_end]."""
    return sum(max(0.0, min(w.end_s, rec_end) - max(w.start_s, rec_start)) for w in windows)


def check_alignment(meta_path: Path, spans: dict[str, tuple[float, float]], windows: tuple[RatedWindow, ...],
                    min_coverage: float) -> None:
    """Each modality, once shifted to the recording clock, must cover the rated windows.

    A modality that covers none (or under ``min_coverage`` of the rated time) almost always means a
    wrong clock offset or a file from another session, not a short recording.
    """
    rated = sum(w.end_s - w.start_s for w in windows)
    for mod, (start, end) in spans.items():
        covered = _span(start, end, windows)
        if covered <= 0.0 or covered < min_coverage * rated:
            raise DatasetError(
                meta_path,
                f"misaligned clocks: {mod} spans {start:.1f}-{end:.1f} s on the recording clock but the rated "
                f"windows span {windows[0].start_s:.1f}-{windows[-1].end_s:.1f} s "
                f"(covers {covered:.1f} of {rated:.1f} s)",
                field=f"clock_offsets_s.{mod}",
            )


def read_recording(directory: Path, subject: Subject, *, min_coverage: float = 0.5) -> Recording:
    """Validate one recording directory: files present, media readable, durations and clocks consistent."""
    directory = Path(directory)
    meta_path = directory / RECORDING_FILE
    meta = read_recording_meta(meta_path)
    if meta.subject_id != subject.subject_id:
        raise DatasetError(meta_path, f"subject_id {meta.subject_id!r} but the folder is {subject.subject_id!r}",
                           field="subject_id")
    if meta.recording_id != directory.name:
        raise DatasetError(meta_path, f"recording_id {meta.recording_id!r} but the folder is {directory.name!r}",
                           field="recording_id")
    video = probe_video(find_video(directory))
    audio = probe_audio(directory / AUDIO_FILE)
    vitals = read_vitals(directory / VITALS_FILE)
    windows = read_ratings(directory / RATINGS_FILE)
    ecg_path = next((directory / n for n in ECG_FILES if (directory / n).exists()), None)
    if ecg_path is not None:
        read_ecg(ecg_path, meta)

    actual = {"video": video.duration_s, "audio": audio.duration_s,
              "vitals": float(vitals.t_s[-1] - vitals.t_s[0])}
    for mod, seconds in actual.items():
        declared = meta.durations_s[mod]
        if abs(declared - seconds) > max(DURATION_TOLERANCE_S, 0.02 * seconds):
            raise DatasetError(meta_path, f"declares {declared:.2f} s but the {mod} file lasts {seconds:.2f} s",
                               field=f"durations_s.{mod}")
    spans = {
        "video": (meta.clock_offsets_s.get("video", 0.0), meta.clock_offsets_s.get("video", 0.0) + actual["video"]),
        "audio": (meta.clock_offsets_s.get("audio", 0.0), meta.clock_offsets_s.get("audio", 0.0) + actual["audio"]),
        "vitals": (meta.clock_offsets_s.get("vitals", 0.0) + float(vitals.t_s[0]),
                   meta.clock_offsets_s.get("vitals", 0.0) + float(vitals.t_s[-1])),
    }
    check_alignment(meta_path, spans, windows, min_coverage)
    return Recording(subject, directory, meta, video, audio, windows)


def read_dataset(root: Path, *, min_coverage: float = 0.5) -> Dataset:
    """Validate a whole dataset root; recordings are returned sorted by (subject, recording)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset root is not a directory")
    subjects = read_subjects(root / SUBJECTS_FILE)
    recordings: list[Recording] = []
    for sub_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub_dir.name not in subjects:
            raise DatasetError(sub_dir, f"folder {sub_dir.name!r} is not a subject_id in {SUBJECTS_FILE}")
        for rec_dir in sorted(p for p in sub_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            recordings.append(read_recording(rec_dir, subjects[sub_dir.name], min_coverage=min_coverage))
    if not recordings:
        raise DatasetError(root, "no recordings (expected <subject_id>/<recording_id>/ folders)")
    return Dataset(root, subjects, tuple(recordings))
