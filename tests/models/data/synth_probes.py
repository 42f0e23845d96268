"""Read-back probes of a synthetic recording for the synth tests: what its files show, decoded as a reviewer would.

Why shared: the confounder and silent-cry tests both ask "is this infant's mouth open in these frames?" of the
decoded video and need truth.csv and the recording's event spans; one copy of each probe keeps them measuring
the same thing.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np

from models.data.loader import read_face_visibility


def truth_rows(rec: Path) -> list[dict[str, float]]:
    """truth.csv of a recording folder, every cell as a number."""
    with (rec / "truth.csv").open() as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def meta(rec: Path) -> dict:
    return json.loads((rec / "recording.json").read_text())


def in_spans(t: np.ndarray, spans: list[list[float]]) -> np.ndarray:
    """Which times fall in any [start, end) span."""
    out = np.zeros(t.shape, dtype=bool)
    for a, b in spans:
        out |= (t >= a) & (t < b)
    return out


def gray_frames(rec: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame of the video file as grey float32 (OpenCV decode), and each frame's recording time."""
    path = next(rec.glob("video.*"))
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(np.float32))
    cap.release()
    return np.stack(frames), meta(rec)["clock_offsets_s"]["video"] + np.arange(len(frames)) / fps


def mouth_openness(frames: np.ndarray) -> np.ndarray:
    """Per frame: the share of the mouth region (below the nose, head tilt included) darker than 0.45 x its median.
    An open mouth shows its dark inside; closed lips, a pacifier or the tube's tape do not."""
    s = frames.shape[1]
    roi = frames[:, int(0.58 * s):int(0.8 * s), int(0.35 * s):int(0.65 * s)]
    ref = np.median(roi.reshape(len(roi), -1), axis=1)
    return (roi < 0.45 * ref[:, None, None]).mean(axis=(1, 2))


def face_visible(rec: Path, t: np.ndarray) -> np.ndarray:
    """face.csv's visibility at recording times ``t``."""
    ft, vis = read_face_visibility(rec / "face.csv")
    offset = meta(rec)["clock_offsets_s"]["video"]
    return vis[np.clip(np.searchsorted(ft, t - offset), 0, len(vis) - 1)]
