"""Turn a dataset (docs/dataset.md) into aligned, labelled windows for training and evaluation.

Why here and in this shape: each rated window becomes exactly what the appliance's window builder
produces at the bedside (16 frames, the cry segment, the last 30 s of vitals, presence flags), all on
one recording clock after the per-file clock offsets, so a model trained on these windows sees at
training time what it will see on the device. Audio is returned at its native rate: resampling and
log-Mel belong to the model front end (models/features), the one place both paths share.

Face crop: the synthetic videos are already face-framed, so the clip is the whole frame. A real
dataset passes ``face_crop`` (a function of the RGB clip (T,H,W,3) that runs the face detector and
returns a fixed-size crop), the same detector the appliance runs.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from models.configs import NIPS_ITEMS, NIPS_MAX
from models.data.layout import (Dataset, DatasetError, Recording, Subject, load_audio, read_dataset, read_ecg,
                                read_vitals)
from models.features.cry import CryConfig, detect_cry

LOADER_VERSION = 2  # bump when the decoded arrays change meaning: invalidates caches
FaceCrop = Callable[[np.ndarray], np.ndarray]
VITALS_WINDOW_S = 30.0  # the vitals of a window: the 30 s ending at its end, as on the device
MIN_HR_FILL = 0.5  # vitals are valid when at least this share of the expected HR numerics is present


def hr_numerics_valid(n_present: int, vitals_window_s: float, numerics_dt_s: float) -> bool:
    """The vitals validity rule: enough HR numerics in the window (the synthetic cohort marks dropouts by it)."""
    return n_present >= MIN_HR_FILL * vitals_window_s / numerics_dt_s


@dataclass(frozen=True)
class VitalsSegment:
    """The vitals of the ``window_s`` seconds ending at the window end; times relative to ``start_s``."""

    start_s: float  # recording clock
    window_s: float
    t_s: np.ndarray  # numerics times, seconds since start_s
    hr_bpm: np.ndarray  # NaN = missing
    spo2_pct: np.ndarray
    beat_t_s: np.ndarray  # R-peak times, seconds since start_s
    rr_ms: np.ndarray  # interval ending at each beat
    ecg: np.ndarray | None  # lead samples from start_s (zeros where not recorded), or None
    ecg_rate_hz: float = 250.0


@dataclass(frozen=True)
class NipsLabel:
    """Mean of the raters (total and items) plus every rater's own total."""

    total: float
    items: dict[str, float]
    rater_totals: dict[str, int]

    @property
    def intensity(self) -> float:
        """The project's 0-10 intensity: NIPS x 10 / 7."""
        return self.total * 10.0 / NIPS_MAX


@dataclass(frozen=True)
class Presence:
    """Is each modality usable in this window? (The fusion model receives this as its mask.)"""

    video: bool  # the video covers the window
    face_visible: bool  # ... and the face is not occluded in most sampled frames
    audio: bool  # the audio covers the window
    cry_detected: bool  # the device's cry detector (models.features.cry) finds a cry segment
    vitals_valid: bool  # at least half of the expected HR numerics in the 30 s are present

    def mask(self) -> dict[str, bool]:
        return {"video": self.face_visible, "audio": self.audio, "vitals": self.vitals_valid}


@dataclass(frozen=True)
class Window:
    """One rated window with every modality aligned to the recording clock."""

    subject: Subject
    recording_id: str
    index: int
    start_s: float
    end_s: float
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    frame_times_s: np.ndarray  # (T,) recording clock
    audio: np.ndarray  # float32 mono in [-1, 1], zero-padded where the file does not cover the window
    audio_rate: int
    vitals: VitalsSegment
    label: NipsLabel
    presence: Presence


# --------------------------------------------------------------------------------------------- pieces


def sample_frame_indices(frame_times: np.ndarray, start_s: float, end_s: float, num_frames: int) -> np.ndarray:
    """Indices of ``num_frames`` frames uniformly spread over the window, the last at its last frame.

    Empty when no frame falls in the window; indices repeat when it holds fewer than ``num_frames``.
    """
    inside = np.flatnonzero((frame_times >= start_s) & (frame_times < end_s))
    if inside.size == 0:
        return inside
    return np.round(np.linspace(inside[0], inside[-1], num_frames)).astype(np.int64)


def decode_frames(path: Path, wanted: np.ndarray, size_hw: tuple[int, int]) -> dict[int, np.ndarray]:
    """Decode the video once, in order, keeping only the wanted frame indices (as RGB)."""
    import cv2

    want = set(int(i) for i in np.unique(wanted))
    out: dict[int, np.ndarray] = {}
    if not want:
        return out
    last = max(want)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DatasetError(path, "OpenCV cannot open this video")
    try:
        k = 0
        while k <= last:
            ok = cap.grab()
            if not ok:
                break
            if k in want:
                ok, frame = cap.retrieve()
                if not ok:
                    raise DatasetError(path, f"frame {k} does not decode")
                if frame.shape[:2] != size_hw:
                    raise DatasetError(path, f"frame {k} is {frame.shape[1]}x{frame.shape[0]}, expected "
                                             f"{size_hw[1]}x{size_hw[0]}")
                out[k] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            k += 1
    finally:
        cap.release()
    return out


def read_face_visibility(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """face.csv -> (t_s on the video clock, visible bool)."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"t_s", "visible"} <= set(reader.fieldnames):
            raise DatasetError(path, f"needs columns t_s, visible; header is {reader.fieldnames}", line=1)
        t, v = [], []
        for row in reader:
            try:
                t.append(float(row["t_s"]))
            except ValueError:
                raise DatasetError(path, f"not a number: {row['t_s']!r}", line=reader.line_num, field="t_s") from None
            if row["visible"] not in ("0", "1"):
                raise DatasetError(path, f"{row['visible']!r} is not 0 or 1", line=reader.line_num, field="visible")
            v.append(row["visible"] == "1")
    return np.asarray(t), np.asarray(v, dtype=bool)


def _segment(signal: np.ndarray, first: int, length: int) -> tuple[np.ndarray, float]:
    """signal[first:first+length] zero-padded outside the signal; and the fraction covered."""
    out = np.zeros(length, dtype=np.float32)
    a, b = max(first, 0), min(first + length, signal.size)
    if b > a:
        out[a - first:b - first] = signal[a:b]
    return out, max(b - a, 0) / max(length, 1)


def make_label(recording: Recording, index: int) -> NipsLabel:
    ratings = recording.windows[index].ratings
    items = {name: float(np.mean([r.items[name] for r in ratings])) for name, _ in NIPS_ITEMS}
    return NipsLabel(float(np.mean([r.total for r in ratings])), items, {r.rater_id: r.total for r in ratings})


# --------------------------------------------------------------------------------------------- decode


def _decode_recording(recording: Recording, num_frames: int, vitals_window_s: float,
                      face_crop: FaceCrop | None) -> dict[str, list]:
    """All windows' arrays of one recording, as lists (one entry per rated window)."""
    video = recording.video
    off_v, off_a, off_m = recording.offset("video"), recording.offset("audio"), recording.offset("vitals")
    frame_times = off_v + np.arange(video.frame_count) / video.fps
    picks = [sample_frame_indices(frame_times, w.start_s, w.end_s, num_frames) for w in recording.windows]
    wanted = np.concatenate(picks) if picks else np.zeros(0, np.int64)
    decoded = decode_frames(video.path, wanted, (video.height, video.width))
    if wanted.size:
        have = max(decoded) if decoded else -1
        short = int(wanted.max()) - have
        if not decoded or short > max(1, int(video.fps)):  # a frame count a little off is common; a truncated file is not
            raise DatasetError(video.path, f"decodes {have + 1} frames but the header says {video.frame_count}")

    face = read_face_visibility(recording.face_path) if recording.face_path else None
    audio, rate = load_audio(recording.audio.path)
    vit = read_vitals(recording.vitals_path)
    vt = vit.t_s + off_m
    numeric = np.isnan(vit.rr_ms)
    beats = ~numeric
    num_dt = float(np.median(np.diff(vt[numeric]))) if numeric.sum() > 1 else 1.0
    ecg = read_ecg(recording.ecg_path, recording.meta) if recording.ecg_path else None

    out: dict[str, list] = {k: [] for k in ("frames", "frame_times", "audio", "v_t", "v_hr", "v_spo2", "b_t", "b_rr",
                                             "ecg", "flags")}
    for w, idx in zip(recording.windows, picks):
        # Video.
        if idx.size:
            idx = np.array([i if i in decoded else max(decoded) for i in idx])
            clip = np.stack([decoded[int(i)] for i in idx])
            times = frame_times[idx]
        else:
            clip = np.zeros((num_frames, video.height, video.width, 3), np.uint8)
            times = np.full(num_frames, np.nan)
        if face_crop is not None:
            clip = np.ascontiguousarray(face_crop(clip))
        video_ok = bool(idx.size)
        if face is not None and video_ok:
            near = np.clip(np.searchsorted(face[0], times - off_v), 0, face[0].size - 1)
            face_ok = bool(face[1][near].mean() >= 0.5)
        else:
            face_ok = video_ok
        # Audio.
        first = int(round((w.start_s - off_a) * rate))
        seg, covered = _segment(audio, first, int(round((w.end_s - w.start_s) * rate)))
        audio_ok = covered >= 0.9
        cry = audio_ok and bool(detect_cry(seg, rate, config=CryConfig(rate=rate)))
        # Vitals: the 30 s ending at the window end.
        v0 = w.end_s - vitals_window_s
        sel = (vt > v0) & (vt <= w.end_s)
        n_sel, b_sel = sel & numeric, sel & beats
        hr_ok = hr_numerics_valid(int(np.isfinite(vit.hr_bpm[n_sel]).sum()), vitals_window_s, num_dt)
        if ecg is not None:
            e_first = int(round((v0 - off_m - ecg.start_s) * ecg.rate_hz))
            e_seg, _ = _segment(ecg.samples, e_first, int(round(vitals_window_s * ecg.rate_hz)))
        else:
            e_seg = np.zeros(0, np.float32)
        out["frames"].append(clip)
        out["frame_times"].append(times)
        out["audio"].append(seg)
        out["v_t"].append(vt[n_sel] - v0)
        out["v_hr"].append(vit.hr_bpm[n_sel])
        out["v_spo2"].append(vit.spo2_pct[n_sel])
        out["b_t"].append(vt[b_sel] - v0)
        out["b_rr"].append(vit.rr_ms[b_sel])
        out["ecg"].append(e_seg)
        out["flags"].append(np.array([video_ok, face_ok, audio_ok, cry, bool(hr_ok)]))
    out["meta"] = [rate, ecg.rate_hz if ecg is not None else 0.0]
    return out


_RAGGED = ("audio", "v_t", "v_hr", "v_spo2", "b_t", "b_rr", "ecg")


def _pack(data: dict[str, list]) -> dict[str, np.ndarray]:
    arrays = {"frames": np.stack(data["frames"]), "frame_times": np.stack(data["frame_times"]),
              "flags": np.stack(data["flags"]), "meta": np.asarray(data["meta"], np.float64)}
    for name in _RAGGED:
        arrays[name] = np.concatenate(data[name]) if data[name] else np.zeros(0)
        arrays[name + "__off"] = np.cumsum([0] + [len(a) for a in data[name]])
    return arrays


def _unpack(arrays: dict[str, np.ndarray]) -> dict[str, list]:
    n = arrays["frames"].shape[0]
    out: dict[str, list] = {k: [arrays[k][i] for i in range(n)] for k in ("frames", "frame_times", "flags")}
    for name in _RAGGED:
        off = arrays[name + "__off"]
        out[name] = [arrays[name][off[i]:off[i + 1]] for i in range(n)]
    out["meta"] = list(arrays["meta"])
    return out


def _cache_key(recording: Recording, num_frames: int, vitals_window_s: float, face_crop: FaceCrop | None) -> str:
    h = hashlib.sha1(f"v{LOADER_VERSION}|{num_frames}|{vitals_window_s}|".encode())
    h.update(getattr(face_crop, "__qualname__", "none").encode())
    for p in sorted(recording.directory.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"|{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- API


def load_recording_windows(recording: Recording, *, num_frames: int = 16, vitals_window_s: float = VITALS_WINDOW_S,
                           cache_dir: Path | str | None = None, face_crop: FaceCrop | None = None) -> list[Window]:
    """Every rated window of one validated recording, decoded and aligned.

    With ``cache_dir``, the decoded arrays are kept in ``<cache_dir>/<subject>_<recording>_<key>.npz``;
    the key covers the files' sizes and modification times and the loader settings, so an edited
    recording is decoded again.
    """
    data = None
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(recording, num_frames, vitals_window_s, face_crop)
        cache_path = Path(cache_dir) / f"{recording.subject.subject_id}_{recording.recording_id}_{key}.npz"
        if cache_path.exists():
            with np.load(cache_path, allow_pickle=False) as z:
                data = _unpack({k: z[k] for k in z.files})
    if data is None:
        data = _decode_recording(recording, num_frames, vitals_window_s, face_crop)
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(cache_path.stem + ".tmp.npz")
            np.savez(tmp, **_pack(data))
            tmp.replace(cache_path)

    rate, ecg_rate = int(data["meta"][0]), float(data["meta"][1])
    windows = []
    for i, w in enumerate(recording.windows):
        v0 = w.end_s - vitals_window_s
        flags = [bool(f) for f in data["flags"][i]]
        vitals = VitalsSegment(v0, vitals_window_s, data["v_t"][i], data["v_hr"][i], data["v_spo2"][i],
                               data["b_t"][i], data["b_rr"][i],
                               data["ecg"][i].astype(np.float32) if ecg_rate > 0 else None,
                               ecg_rate if ecg_rate > 0 else 250.0)
        windows.append(Window(recording.subject, recording.recording_id, i, w.start_s, w.end_s,
                              data["frames"][i], data["frame_times"][i], data["audio"][i].astype(np.float32), rate,
                              vitals, make_label(recording, i), Presence(*flags)))
    return windows


def iter_windows(dataset: Dataset | Path | str, *, progress: bool = False, **kwargs) -> Iterator[Window]:
    """Windows of every recording in order (subject, recording, window); kwargs as load_recording_windows."""
    from tqdm import tqdm

    if not isinstance(dataset, Dataset):
        dataset = read_dataset(Path(dataset))
    for rec in tqdm(dataset.recordings, desc="load recordings", unit="rec", disable=not progress):
        yield from load_recording_windows(rec, **kwargs)


def load_windows(dataset: Dataset | Path | str, **kwargs) -> list[Window]:
    """All windows of a dataset as a list (see :func:`iter_windows`)."""
    return list(iter_windows(dataset, **kwargs))
