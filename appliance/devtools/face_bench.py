"""``python -m appliance.devtools.face_bench``: CenterFace against the Haar cascade on one set of faces.

Why a benchmark of its own: the face detector decides whether the video modality exists at all, and the
bedside's faces are the hard ones (an infant on its side, small in the frame, dim, a mask over nose and mouth).
Both detectors run exactly as the tracker runs them (:func:`appliance.sources.face_detectors.make_detector`
with the device's defaults, frames resized to 320 px wide) on:

* real photographs that packages ship (scikit-image's ``astronaut`` and ``camera``, matplotlib's
  ``grace_hopper``; test/bench dependencies only), with hand-checked face boxes, rotated -45..+45 degrees,
  scaled down to 320/160/80 px wide, darkened, and half covered (mouth and nose under a mask; eyes under a
  phototherapy eye shield);
* the synthetic cohort's rendered infant faces (``models/data/synth_video.py``): three skin tones, neutral and
  crying, head tilts, CPAP mask, pacifier, tube, a hand over the face, at 320, 112 and 64 px frames; and the
  cohort's own video files (mp4, decoded by OpenCV) split by the cohort's visibility flag.

A detection counts when a box's centre lies inside the true face box and its side is 0.5-2x the true one.
Timings are per frame, single-threaded ONNX Runtime (as the tracker runs it), on this machine under whatever
load it has: the load average is written beside them. Writes ``face_detectors.md`` and ``face_detectors.png``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from appliance.sources.face_detectors import CenterFaceDetector, FaceDetector, HaarDetector

Box = tuple[float, float, float, float]
DETECTORS = ("centerface", "haar")
ROTATIONS = (-45, -30, -15, 0, 15, 30, 45)
WIDTHS = (320, 160, 80)
DARKEN = (("dim (x0.35)", 0.35), ("night (x0.12)", 0.12))


@dataclass(frozen=True)
class Photo:
    """A photograph with its face box (x, y, w, h), checked by eye."""

    name: str
    image: np.ndarray  # BGR
    face: Box


def photos() -> list[Photo]:
    """The face photographs scikit-image and matplotlib ship (no download)."""
    import matplotlib
    from skimage import data

    hopper = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    return [Photo("astronaut", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR), (185, 63, 84, 112)),
            Photo("camera", cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR), (197, 113, 60, 88)),
            Photo("grace_hopper", hopper, (177, 118, 179, 218))]


def hit(boxes: list[tuple[int, int, int, int]], face: Box) -> bool:
    """A box whose centre lies inside ``face`` and whose side is within 0.5-2x of the face's."""
    fx, fy, fw, fh = face
    side = max(fw, fh)
    for x, y, w, h in boxes:
        cx, cy = x + w / 2, y + h / 2
        if fx <= cx <= fx + fw and fy <= cy <= fy + fh and 0.5 * side <= max(w, h) <= 2 * side:
            return True
    return False


def rotate(image: np.ndarray, face: Box, degrees: float) -> tuple[np.ndarray, Box]:
    """The image rotated about its centre (grey where it leaves the frame) and the rotated face's box."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    out = cv2.warpAffine(image, m, (w, h), borderValue=(128, 128, 128))
    x, y, fw, fh = face
    corners = np.array([[x, y, 1], [x + fw, y, 1], [x, y + fh, 1], [x + fw, y + fh, 1]], np.float64) @ m.T
    cx, cy = corners.mean(axis=0)
    return out, (cx - fw / 2, cy - fh / 2, fw, fh)  # same size: the face itself did not grow


def cover(image: np.ndarray, face: Box, part: str) -> np.ndarray:
    """A mask over mouth and nose (lower half, pale blue) or an eye shield over the eyes (dark band)."""
    out = image.copy()
    x, y, w, h = face
    if part == "mouth":
        cv2.rectangle(out, (int(x - 0.05 * w), int(y + 0.5 * h)), (int(x + 1.05 * w), int(y + 1.05 * h)),
                      (225, 210, 190), -1)
    else:
        cv2.rectangle(out, (int(x - 0.02 * w), int(y + 0.22 * h)), (int(x + 1.02 * w), int(y + 0.5 * h)),
                      (60, 50, 40), -1)
    return out


def darken(image: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Less light and the sensor noise that comes with it."""
    noisy = image.astype(np.float32) * factor + rng.normal(0.0, 2.0, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


Case = tuple[str, str, np.ndarray, Box]  # (group, condition, image, face box)


def photo_cases(rng: np.random.Generator) -> Iterator[Case]:
    for p in photos():
        for deg in ROTATIONS:
            yield ("rotation", f"{deg:+d} deg", *rotate(p.image, p.face, deg))
        for width in WIDTHS:
            s = width / p.image.shape[1]
            small = cv2.resize(p.image, (width, round(p.image.shape[0] * s)), interpolation=cv2.INTER_AREA)
            yield "scale", f"{width} px wide", small, tuple(v * s for v in p.face)  # type: ignore[misc]
        for label, factor in DARKEN:
            yield "light", label, darken(p.image, factor, rng), p.face
        yield "occlusion", "mouth and nose covered", cover(p.image, p.face, "mouth"), p.face
        yield "occlusion", "eyes covered (eye shield)", cover(p.image, p.face, "eyes"), p.face


def synthetic_cases(rng: np.random.Generator) -> Iterator[Case]:
    """The cohort's renderer, frame by frame: every skin tone, neutral and crying, tilted, with each device."""
    from models.data.synth_video import (HAIR_COLORS, HEAD, SKIN_TONES, Expression, FaceLook, draw_background,
                                         draw_face, draw_hand)

    crying = Expression(brow=1.0, squeeze=1.0, furrow=1.0, mouth=0.85)
    variants = (("clean, neutral", Expression(), {}), ("clean, crying", crying, {}),
                ("CPAP mask and bonnet", Expression(mouth=0.3), {"cpap": True}),
                ("pacifier", Expression(), {"pacifier": True}), ("endotracheal tube", crying, {"tube": True}),
                ("hand over the face", Expression(), {"hand": True}))
    for size in (320, 112, 64):
        bg = draw_background(size, rng)
        for label, expr, devices in variants:
            for i, tone in enumerate(SKIN_TONES):
                for roll in (-40, -20, 0, 20, 40):
                    look = FaceLook(SKIN_TONES[tone], HAIR_COLORS[i], 0.3 + 0.35 * i, i)
                    face, mask = draw_face(size, SKIN_TONES[tone], expr, look=look,
                                           **{k: v for k, v in devices.items() if k != "hand"})
                    m = cv2.getRotationMatrix2D((size / 2, size / 2), roll, 1.0)
                    face, mask = cv2.warpAffine(face, m, (size, size)), cv2.warpAffine(mask, m, (size, size))
                    alpha = mask.astype(np.float32)[..., None] / 255
                    frame = bg * (1 - alpha) + face.astype(np.float32) * alpha
                    if devices.get("hand"):
                        frame = draw_hand(frame, 0.5, 0.55, SKIN_TONES[tone])
                    frame = cv2.GaussianBlur(frame, (0, 0), size / 200) + rng.normal(0, 4.0, frame.shape)
                    hx, hy, ax, ay = HEAD  # the true face: the head below the crown (brow to chin)
                    truth = ((hx - ax) * size, (hy - 0.6 * ay) * size, 2 * ax * size, 1.6 * ay * size)
                    yield (f"synthetic {size} px", label, np.clip(frame, 0, 255).astype(np.uint8), truth)


def cohort_rates(detectors: dict[str, FaceDetector], workdir: Path, infants: int = 4) -> dict[str, dict[str, tuple[int, int]]]:
    """Detected / frames in the cohort's own mp4 files (112 px, every 3rd frame), by the visibility flag."""
    import csv

    from models.data.synth import SynthOptions, synth_cohort

    root = synth_cohort(workdir / "cohort", infants, 0, SynthOptions(minutes=0.5), progress=False,
                        overwrite=True).root
    out: dict[str, dict[str, tuple[int, int]]] = {d: {"visible": (0, 0), "marked not visible": (0, 0)}
                                                  for d in detectors}
    for rec in sorted(root.glob("*/*/video.mp4")):
        with (rec.parent / "face.csv").open() as fh:
            visible = [row["visible"] == "1" for row in csv.DictReader(fh)]
        cap = cv2.VideoCapture(str(rec))
        k = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if k % 3 == 0 and k < len(visible):
                key = "visible" if visible[k] else "marked not visible"
                for name, det in detectors.items():
                    found, n = out[name][key]
                    out[name][key] = (found + bool(det.detect(frame)), n + 1)
            k += 1
        cap.release()
    return out


def time_ms(detector: FaceDetector, image: np.ndarray, repeats: int) -> float:
    """Median wall time of one detection, ms."""
    detector.detect(image)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.detect(image)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def run(out_dir: Path, workdir: Path, repeats: int = 30,
        progress: Callable[[str], None] = lambda s: print(s, flush=True)) -> Path:
    detectors: dict[str, FaceDetector] = {"centerface": CenterFaceDetector(), "haar": HaarDetector()}
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    results: dict[tuple[str, str], dict[str, list[bool]]] = {}
    examples: list[tuple[str, np.ndarray, dict[str, list]]] = []
    for source in (photo_cases(rng), synthetic_cases(rng)):
        for group, condition, image, face in source:
            row = results.setdefault((group, condition), {d: [] for d in detectors})
            found = {name: det.detect(image) for name, det in detectors.items()}
            for name, boxes in found.items():
                row[name].append(hit(boxes, face))
            if (group, condition) in EXAMPLES and len(row["haar"]) == EXAMPLES[(group, condition)]:
                examples.append((f"{condition}" if group != "synthetic 320 px" else f"synthetic: {condition}",
                                 image, found))
    progress("photos and rendered faces done; cohort videos ...")
    cohort = cohort_rates(detectors, workdir)
    frame = cv2.resize(photos()[0].image, (640, 480))
    small = cv2.resize(frame, (320, 240))
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # like for like: ONNX Runtime runs CenterFace on one thread in the tracker
    try:
        timings = {name: (time_ms(det, frame, repeats), time_ms(det, small, repeats))
                   for name, det in detectors.items()}
    finally:
        cv2.setNumThreads(threads)
    load_after = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "face_detectors.png"
    _figure(png, results, examples)
    md = out_dir / "face_detectors.md"
    md.write_text(_markdown(results, cohort, timings, load_before, load_after, repeats), encoding="utf-8")
    return md


#: Which example (group, condition) -> its n-th image (counting from 1) goes into the PNG's strip.
EXAMPLES = {("rotation", "+30 deg"): 1, ("rotation", "-45 deg"): 3, ("occlusion", "mouth and nose covered"): 1,
            ("scale", "80 px wide"): 3, ("light", "night (x0.12)"): 2,
            ("synthetic 320 px", "CPAP mask and bonnet"): 13, ("synthetic 320 px", "clean, crying"): 12}


def _pct(values: list[bool]) -> str:
    return f"{100.0 * np.mean(values):.0f} % ({sum(values)}/{len(values)})"


def _markdown(results: dict[tuple[str, str], dict[str, list[bool]]], cohort: dict[str, dict[str, tuple[int, int]]],
              timings: dict[str, tuple[float, float]], load_before: tuple[float, ...], load_after: tuple[float, ...],
              repeats: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    lines = [
        "# Face detectors: CenterFace (ONNX Runtime) against OpenCV's Haar cascade",
        "",
        "Written by `python -m appliance.devtools.face_bench --out docs/benchmarks` "
        "(`appliance/devtools/face_bench.py` says how the set is made). Both detectors as the tracker runs them: "
        "frames resized to 320 px wide, CenterFace score >= 0.4, Haar scale 1.1 / 5 neighbours, smallest face "
        "10 % of the frame height. A detection counts when a box's centre lies inside the true face box and its "
        "side is 0.5-2x the true one (photos: boxes checked by eye; rendered faces: the renderer's own geometry).",
        "",
        "**Result:** CenterFace is the default (`[camera] face_detector = \"centerface\"`); the Haar cascade is the "
        "fallback when the ONNX file cannot be loaded.",
        "",
        "## Detected, per condition",
        "",
        "| set | condition | CenterFace | Haar cascade |",
        "|---|---|---|---|",
    ]
    for (group, condition), row in results.items():
        lines.append(f"| {group} | {condition} | {_pct(row['centerface'])} | {_pct(row['haar'])} |")
    lines += ["", "Photos: astronaut, camera (cameraman, a three-quarter view), grace_hopper; one image per cell "
              "and photo. Rendered faces: 3 skin tones x 5 head tilts (-40..+40 deg) per cell, sensor noise added.",
              "", "## The synthetic cohort's video files", "",
              "4 infants x 30 s, 112 px mp4 at 10 fps, every third frame decoded by OpenCV. *Marked not visible* "
              "are the frames `face.csv` flags (a hand over the face, or three of four facial regions under "
              "devices): finding a face there is not required, a score's video presence follows the flag in "
              "training.", "", "| frames | CenterFace | Haar cascade |", "|---|---|---|"]
    for key in ("visible", "marked not visible"):
        cells = []
        for name in DETECTORS:
            found, n = cohort[name][key]
            cells.append(f"{100.0 * found / max(n, 1):.0f} % ({found}/{n})")
        lines.append(f"| {key} | {' | '.join(cells)} |")
    lines += ["", "## Time per frame", "",
              f"Median of {repeats} detections, one thread each (CenterFace: ONNX Runtime CPU provider, "
              "`intra_op_num_threads = 1`, as the tracker runs it; Haar: `cv2.setNumThreads(1)` for the timing, "
              "the tracker leaves OpenCV's default), including the resize to 320 px.", "",
              "| frame | CenterFace | Haar cascade |", "|---|---|---|",
              f"| 640x480 | {timings['centerface'][0]:.1f} ms | {timings['haar'][0]:.1f} ms |",
              f"| 320x240 | {timings['centerface'][1]:.1f} ms | {timings['haar'][1]:.1f} ms |", "",
              f"Machine: {cpu}, {os.cpu_count()} cores, shared with other work: load average (1/5/15 min) "
              f"{' / '.join(f'{v:.2f}' for v in load_before)} before the run, "
              f"{' / '.join(f'{v:.2f}' for v in load_after)} after. The tracker detects every 5th frame, so at "
              "30 fps CenterFace costs about 6 detections a second.", "",
              "![detected per condition and examples](face_detectors.png)", ""]
    return "\n".join(lines)


def _figure(path: Path, results: dict[tuple[str, str], dict[str, list[bool]]],
            examples: list[tuple[str, np.ndarray, dict[str, list]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    fig = plt.figure(figsize=(13, 11))
    grid = fig.add_gridspec(2, len(examples), height_ratios=[3.2, 1])
    ax = fig.add_subplot(grid[0, :])
    y = np.arange(len(keys))
    for k, (name, colour) in enumerate((("centerface", "tab:green"), ("haar", "tab:orange"))):
        ax.barh(y + (0.2 if k else -0.2), [100 * np.mean(results[key][name]) for key in keys], height=0.4,
                color=colour, label={"centerface": "CenterFace (ONNX Runtime)", "haar": "Haar cascade"}[name])
    ax.set_yticks(y, [f"{g}: {c}" for g, c in keys], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("faces found, %")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right")
    ax.set_title("Face detectors on the same set (photographs rotated, scaled, darkened, covered; rendered infants)")
    for i, (label, image, found) in enumerate(examples):
        a = fig.add_subplot(grid[1, i])
        shown = image.copy()
        t = max(1, round(max(image.shape[:2]) / 150))
        for name, colour in (("haar", (0, 140, 255)), ("centerface", (0, 200, 0))):
            for x, yy, w, h in found[name]:
                cv2.rectangle(shown, (x, yy), (x + w, yy + h), colour, t)
        a.imshow(cv2.cvtColor(shown, cv2.COLOR_BGR2RGB))
        a.set_title(label, fontsize=7)
        a.axis("off")
    fig.text(0.5, 0.01, "examples: green = CenterFace, orange = Haar cascade", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.devtools.face_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"), help="folder for the .md and .png")
    parser.add_argument("--workdir", type=Path, default=None, help="folder for the synthetic cohort (temporary)")
    parser.add_argument("--repeats", type=int, default=30, help="timed detections per detector and frame size")
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="face-bench-") as tmp:
        md = run(args.out, args.workdir or Path(tmp), repeats=args.repeats)
    print(f"wrote {md} and {md.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
