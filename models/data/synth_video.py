"""Synthetic face video of an infant in an incubator, drawn with OpenCV.

Why drawn faces: the facial actions that carry neonatal pain (brow bulge, eye squeeze, nasolabial
furrow, open mouth) can be rendered at a known intensity, so a test can check that the video carries
the pain signal, while head motion, lighting changes and occlusions (pacifier, CPAP mask or
endotracheal tube, the infant's hand) make the face an imperfect witness that fusion must back up.

How imperfect, and why: with a clean, always-visible face the video alone scored almost as well as the
raters, so nothing was left for the cry and the vitals to add, unlike at a real bedside. The camera
therefore sees less than the bedside rater does:

* occlusions are frequent: the infant's hand (several times a minute, more during pain) hides the
  upper face; a nasal CPAP mask with its bonnet hides the nasolabial region and the brow; a pacifier
  or the endotracheal tube's tape hides the mouth. ``face.csv`` marks a frame not visible when a hand
  covers the face or when three of the four facial action regions are hidden (the loader's presence
  flag follows it), as a face-quality gate would;
* facial expressiveness varies by infant: some (more often preterm) show a weak facial response to the
  same pain, a known finding in neonatal pain research;
* facial actions fluctuate from frame to frame around the rated behaviour (slow AR(1) noise), and
  lighting changes are frequent and large.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.signal import lfilter

from models.data.synth_ratings import PainScenario

# Three skin tone groups in the manner of Fitzpatrick I-II / III-IV / V-VI (BGR, 0-255).
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "I-II": (170, 190, 235),
    "III-IV": (110, 150, 200),
    "V-VI": (55, 80, 120),
}
FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}


@dataclass(frozen=True)
class VideoOptions:
    size: int = 112
    fps: float = 10.0
    container: str = ".mp4"
    head_motion: float = 1.0  # scale of the head's random walk
    lighting_changes_per_min: float = 1.5
    lighting_range: tuple[float, float] = (0.5, 1.4)  # brightness factor after each change
    hand_occlusions_per_min: float = 1.2
    hand_occlusion_s: tuple[float, float] = (3.0, 10.0)
    pacifier_probability: float = 0.45  # per non-intubated recording
    cpap_probability: float = 0.35  # nasal CPAP mask with bonnet, per non-intubated recording
    weak_expression_probability: float = 0.3  # per term infant; preterm 1.5 x
    facial_noise: float = 0.15  # SD of the slow frame-to-frame fluctuation of facial actions
    noise_sigma: float = 5.0


@dataclass(frozen=True)
class Expression:
    """Facial action intensities in [0, 1] for one frame."""

    brow: float = 0.0
    squeeze: float = 0.0
    furrow: float = 0.0
    mouth: float = 0.0
    eyes_open: float = 0.0


def _p(size: int, x: float, y: float) -> tuple[int, int]:
    return int(round(x * size)), int(round(y * size))


def _blend(color: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(min(255, max(0, int(c * factor))) for c in color)  # type: ignore[return-value]


def draw_face(size: int, skin: tuple[int, int, int], expr: Expression, *, tube: bool = False,
              cpap: bool = False, pacifier: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Face layer (BGR) and its mask at a neutral pose, in normalized face coordinates."""
    img = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    s = size
    th = max(1, s // 56)
    cv2.ellipse(img, _p(s, 0.5, 0.52), (int(0.34 * s), int(0.41 * s)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(mask, _p(s, 0.5, 0.52), (int(0.34 * s), int(0.41 * s)), 0, 0, 360, 255, -1)
    dark = _blend(skin, 0.55)
    darker = _blend(skin, 0.35)

    # Brow bulge: inner brows drop and draw together, a shaded bulge and vertical furrows between them.
    drop, pull = 0.05 * expr.brow, 0.03 * expr.brow
    for side in (-1, 1):
        inner = (0.5 + side * (0.05 - pull), 0.36 + drop)
        outer = (0.5 + side * 0.17, 0.36)
        cv2.line(img, _p(s, *inner), _p(s, *outer), dark, th + int(expr.brow * 1.5 * th), cv2.LINE_AA)
    if expr.brow > 0.15:
        bulge = img.copy()
        cv2.ellipse(bulge, _p(s, 0.5, 0.34), (int(0.07 * s), int(0.035 * s)), 0, 0, 360, dark, -1, cv2.LINE_AA)
        cv2.addWeighted(bulge, 0.6 * expr.brow, img, 1 - 0.6 * expr.brow, 0, img)
        for dx in (-0.015, 0.015):
            cv2.line(img, _p(s, 0.5 + dx, 0.36), _p(s, 0.5 + dx, 0.42), darker, th, cv2.LINE_AA)

    # Eyes: open (dark ellipses), closed (thin line) or squeezed (thick line plus creases).
    for side in (-1, 1):
        cx, cy = 0.5 + side * 0.11, 0.46
        if expr.squeeze > 0.2:
            cv2.line(img, _p(s, cx - 0.055, cy), _p(s, cx + 0.055, cy), darker, th + int(expr.squeeze * 2 * th),
                     cv2.LINE_AA)
            for k in (-1, 0, 1):
                a, b = _p(s, cx + side * 0.06, cy + 0.012 * k), _p(s, cx + side * 0.09, cy + 0.025 * k)
                cv2.line(img, a, b, dark, th, cv2.LINE_AA)
            cv2.ellipse(img, _p(s, cx, cy + 0.035), (int(0.045 * s), int(0.012 * s)), 0, 0, 180, dark, th,
                        cv2.LINE_AA)
        elif expr.eyes_open > 0.5:
            cv2.ellipse(img, _p(s, cx, cy), (int(0.045 * s), int(0.022 * s)), 0, 0, 360, (40, 35, 35), -1,
                        cv2.LINE_AA)
        else:
            cv2.ellipse(img, _p(s, cx, cy), (int(0.045 * s), int(0.01 * s)), 0, 0, 180, dark, th, cv2.LINE_AA)

    cv2.ellipse(img, _p(s, 0.5, 0.56), (int(0.035 * s), int(0.022 * s)), 0, 0, 360, _blend(skin, 0.85), -1,
                cv2.LINE_AA)
    # Nasolabial furrow: arcs from the nose wings down to the mouth corners, deeper with intensity.
    if expr.furrow > 0.1:
        col = _blend(skin, 1.0 - 0.55 * expr.furrow)
        for side in (-1, 1):
            pts = np.array([_p(s, 0.5 + side * 0.045, 0.57), _p(s, 0.5 + side * 0.085, 0.62),
                            _p(s, 0.5 + side * 0.09, 0.69)], np.int32)
            cv2.polylines(img, [pts], False, col, th + int(expr.furrow * th), cv2.LINE_AA)

    # Mouth: a line when closed; a dark, widening, squarish opening when crying (tongue when wide).
    m = expr.mouth
    if m < 0.08:
        cv2.line(img, _p(s, 0.45, 0.71), _p(s, 0.55, 0.71), darker, th, cv2.LINE_AA)
    else:
        axes = (int((0.05 + 0.05 * m) * s), max(1, int((0.01 + 0.075 * m) * s)))
        cv2.ellipse(img, _p(s, 0.5, 0.71), axes, 0, 0, 360, (35, 25, 70), -1, cv2.LINE_AA)
        if m > 0.5:
            cv2.ellipse(img, _p(s, 0.5, 0.71 + 0.04 * m), (int(0.04 * s), int(0.018 * s)), 0, 180, 360,
                        (90, 80, 170), -1, cv2.LINE_AA)
    if cpap:  # nasal mask over the nose and nasolabial folds; the bonnet holding it covers the brow
        cv2.rectangle(img, _p(s, 0.36, 0.50), _p(s, 0.64, 0.68), (200, 200, 190), -1)
        cv2.line(img, _p(s, 0.36, 0.58), _p(s, 0.10, 0.50), (180, 170, 160), 2 * th)
        cv2.line(img, _p(s, 0.64, 0.58), _p(s, 0.90, 0.50), (180, 170, 160), 2 * th)
        cv2.ellipse(img, _p(s, 0.5, 0.25), (int(0.40 * s), int(0.16 * s)), 0, 0, 360, (170, 190, 150), -1,
                    cv2.LINE_AA)
    if tube:
        cv2.rectangle(img, _p(s, 0.36, 0.69), _p(s, 0.64, 0.73), (215, 225, 230), -1)  # tape
        cv2.line(img, _p(s, 0.5, 0.71), _p(s, 0.5, 1.0), (225, 235, 240), 3 * th)
    if pacifier:
        cv2.circle(img, _p(s, 0.5, 0.72), int(0.08 * s), (230, 180, 120), -1, cv2.LINE_AA)
        cv2.circle(img, _p(s, 0.5, 0.72), int(0.03 * s), (250, 240, 230), -1, cv2.LINE_AA)
    return img, mask


def hidden_regions(*, tube: bool, cpap: bool, pacifier: bool) -> int:
    """How many of the four facial action regions (brow, eyes, furrow, mouth) the devices hide."""
    brow = furrow = cpap
    mouth = tube or pacifier
    return int(brow) + int(furrow) + int(mouth)


def _smooth_walk(rng: np.random.Generator, n: int, alpha: float, sigma: float) -> np.ndarray:
    return lfilter([1.0], [1.0, -alpha], rng.normal(0.0, sigma, size=n))


def _events(rng: np.random.Generator, duration: float, per_min: float, len_lo: float, len_hi: float,
            t0: float = 0.0) -> list[tuple[float, float]]:
    n = rng.poisson(max(per_min, 0.0) * duration / 60.0)
    out = []
    for _ in range(n):
        a = t0 + rng.uniform(0, duration)
        out.append((a, a + rng.uniform(len_lo, len_hi)))
    return sorted(out)


def _in_any(t: float, spans: list[tuple[float, float]]) -> bool:
    return any(a <= t < b for a, b in spans)


def render_video(path: Path, scenario: PainScenario, rng: np.random.Generator, *, skin_tone: str,
                 intubated: bool, start_s: float, duration_s: float, cry_bursts: list[tuple[float, float, int]],
                 options: VideoOptions, preterm: bool = False) -> np.ndarray:
    """Write the video covering recording time [start_s, start_s + duration_s); return per-frame visibility.

    Frame k shows recording time ``start_s + k / fps`` (so the clock offset of the video is start_s).
    A frame is not visible when a hand covers the face or three of the four facial action regions are
    hidden (see :func:`hidden_regions`).
    """
    size, fps = options.size, options.fps
    n = int(round(duration_s * fps))
    times = start_s + np.arange(n) / fps
    skin = SKIN_TONES[skin_tone]
    pacifier_rec = (not intubated) and rng.random() < options.pacifier_probability
    cpap = (not intubated) and rng.random() < options.cpap_probability
    p_weak = min(1.0, options.weak_expression_probability * (1.5 if preterm else 1.0))
    expressiveness = rng.uniform(0.15, 0.45) if rng.random() < p_weak else rng.uniform(0.75, 1.1)
    pacifier_spans = _events(rng, duration_s, 1.5, 15.0, 45.0, start_s) if pacifier_rec else []
    hand_spans = _events(rng, duration_s, options.hand_occlusions_per_min, *options.hand_occlusion_s, start_s)
    # The infant's own hand comes up more during pain (arms item): add events in painful windows.
    for w in np.flatnonzero(scenario.items[:, 3] > 0):
        if rng.random() < 0.3:
            a = scenario.window_starts[w] + rng.uniform(0, scenario.window_s)
            hand_spans.append((a, a + rng.uniform(2.0, 6.0)))
    light_steps = _events(rng, duration_s, options.lighting_changes_per_min, 0.0, 0.0, start_s)
    light_levels = [1.0] + [float(rng.uniform(*options.lighting_range)) for _ in light_steps]
    light_times = [start_s] + [a for a, _ in light_steps]
    # Facial actions fluctuate around the behaviour: slow AR(1) noise with stationary SD facial_noise.
    facial_wander = _smooth_walk(rng, n, 0.9, options.facial_noise * np.sqrt(1 - 0.9**2))

    motion = options.head_motion
    dx = _smooth_walk(rng, n, 0.97, 0.004 * motion)
    dy = _smooth_walk(rng, n, 0.97, 0.004 * motion)
    ang = _smooth_walk(rng, n, 0.97, 0.6 * motion)
    background = np.empty((size, size, 3), np.float32)
    background[:] = rng.uniform(150, 210, size=3)
    background += np.linspace(-20, 20, size, dtype=np.float32)[:, None, None]
    # A small bank of sensor-noise frames drawn once: per-frame noise at full cost dominated rendering.
    noise_bank = rng.normal(0, options.noise_sigma, size=(8, size, size, 3)).astype(np.float32)
    hand_centres: dict[tuple[float, float], tuple[float, float]] = {}

    visible = np.ones(n, dtype=bool)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC[options.container]), fps, (size, size))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} (container {options.container})")
    burst_arr = np.array([(a, b, lvl) for a, b, lvl in cry_bursts], dtype=np.float64).reshape(-1, 3)
    try:
        for k, t in enumerate(times):
            pain = float(scenario.pain_at(t))
            items = scenario.items[int(scenario.window_index(t))]
            facial = pain if items[0] else 0.25 * pain
            facial = min(1.0, max(0.0, expressiveness * facial * 1.2 + float(facial_wander[k])))
            in_burst = burst_arr[(burst_arr[:, 0] <= t) & (t < burst_arr[:, 1])]
            cry = int(items[1])
            if len(in_burst):
                mouth = 0.85 if in_burst[0, 2] >= 2 else 0.45
            else:  # between phonations (or silent cry when intubated) the mouth stays partly open
                mouth = 0.3 * cry + 0.15 * facial
            expr = Expression(brow=facial, squeeze=facial if facial > 0.3 else 0.0, furrow=facial, mouth=mouth,
                              eyes_open=float(items[5]))
            pacifier = _in_any(t, pacifier_spans) and cry == 0
            face, mask = draw_face(size, skin, expr, tube=intubated, cpap=cpap, pacifier=pacifier)
            if hidden_regions(tube=intubated, cpap=cpap, pacifier=pacifier) >= 3:
                visible[k] = False
            agitation = 0.5 + 0.5 * max(items[3], items[4], items[5])
            m = cv2.getRotationMatrix2D((size / 2, size / 2), float(ang[k] * agitation), 1.0)
            m[:, 2] += (dx[k] * agitation * size, dy[k] * agitation * size)
            face = cv2.warpAffine(face, m, (size, size))
            mask = cv2.warpAffine(mask, m, (size, size)).astype(np.float32)[..., None] * np.float32(1 / 255)
            frame = background * (1 - mask) + face.astype(np.float32) * mask
            hand = next(((a, b) for a, b in hand_spans if a <= t < b), None)
            if hand is not None:
                cx, cy = hand_centres.setdefault(hand, (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.35, 0.75))))
                hand_layer = frame.copy()
                cv2.ellipse(hand_layer, _p(size, cx, cy), (int(0.2 * size), int(0.15 * size)), 30, 0, 360,
                            tuple(float(c) * 1.05 for c in skin), -1, cv2.LINE_AA)
                frame = hand_layer
                visible[k] = False
            level = light_levels[int(np.searchsorted(light_times, t, side="right")) - 1]
            frame = frame * np.float32(level) + noise_bank[int(rng.integers(len(noise_bank)))]
            writer.write(np.clip(frame, 0, 255, out=frame).astype(np.uint8))
    finally:
        writer.release()
    return visible


def write_face_csv(path: Path, fps: float, visible: np.ndarray) -> None:
    """face.csv: per frame, time on the video clock and whether the face is visible (not occluded)."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["t_s", "visible"])
        for k, v in enumerate(visible):
            w.writerow([f"{k / fps:.3f}", int(v)])
