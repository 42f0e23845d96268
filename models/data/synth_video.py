"""Synthetic face video of an infant in an incubator, drawn with OpenCV and numpy.

Why drawn faces: the facial actions that carry neonatal pain (brow bulge, eye squeeze, nasolabial
furrow, open mouth) can be rendered at a known intensity, so a test can check that the video carries
the pain signal, while head motion, lighting changes and occlusions (pacifier, CPAP mask or
endotracheal tube, the infant's hand) make the face an imperfect witness that fusion must back up.

Why rendered rather than schematic: the device finds the face with a real detector (CenterFace, see
``appliance/sources/face_detectors.py``), and the simulated bed must exercise that path. Drawn ovals were found
by no detector. So the head is shaded as a lit ellipsoid with chubby cheeks, ears, mottled skin, eye sockets, a
nose with its shadow and nostrils, lips and hair on the crown, over a cot sheet and swaddling blanket, with a
little lens blur, at the frame size asked for (the simulated bed renders at a camera's 320 px, not upscaled).
The still parts are drawn once per infant (cached); each frame adds the expression, so a CI cohort stays fast.
``docs/benchmarks/face_detectors.md`` shows how often each detector finds these faces.

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
* facial actions fluctuate from frame to frame around the rated behaviour (slow AR(1) noise),
  lighting changes are frequent and large, and the head lies tilted (up to +-20 degrees per recording).

What the camera also sees (``synth_confounders``): the infant's arm waving into the bottom of the frame during
limb movements (the movements that disturb the pulse oximeter), and, for an intubated infant with the silent
cry on, the cry face around the tube (mouth open, brow lowered, eyes squeezed) while the microphone hears
nothing. A second hospital's camera and room (``lighting_level``, ``camera_rotation_deg``, ``camera_distance``)
change the whole picture, not the infant.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from scipy.signal import lfilter

from models.data.synth_confounders import LimbMove
from models.data.synth_ratings import PainScenario

# Three skin tone groups in the manner of Fitzpatrick I-II / III-IV / V-VI (BGR, 0-255).
SKIN_TONES: dict[str, tuple[int, int, int]] = {
    "I-II": (170, 190, 235),
    "III-IV": (110, 150, 200),
    "V-VI": (55, 80, 120),
}
FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
# The facial action intensity of a silent cry burst (whimper, vigorous): brow, eye squeeze and furrow of a cry face.
SILENT_CRY_FACE = (0.55, 0.8)


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
    head_roll_deg: float = 20.0  # the head's tilt in the image, uniform in +-this per recording (lying on its side)
    lighting_level: float = 1.0  # the room's light: scales every brightness level (a dim unit < 1, a bright one > 1)
    camera_rotation_deg: float = 0.0  # the camera's roll against the cot, added to every head tilt
    camera_distance: float = 1.0  # relative to the face-framed default: 2 shows the face at half the size

    def __post_init__(self) -> None:
        checks = (("lighting_level", 0.1, 3.0), ("camera_rotation_deg", -180.0, 180.0), ("camera_distance", 0.5, 4.0))
        for name, lo, hi in checks:
            value = getattr(self, name)
            if not lo <= value <= hi:  # NaN fails too
                raise ValueError(f"VideoOptions.{name} (--{name.replace('_', '-')}) must be between {lo:g} and "
                                 f"{hi:g}, got {value!r}")


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


def _mix(a: tuple[float, ...], b: tuple[float, ...], t: float) -> tuple[float, ...]:
    return tuple(float(x) * (1 - t) + float(y) * t for x, y in zip(a, b))


# Face geometry, as fractions of the (square, face-framed) frame side. The head with its hair spans about
# 0.6 x 0.72 of the frame, so a detector's face box widened by the tracker's margin is close to the whole frame
# (what the loader feeds the network in training), with the context a detector needs around it.
HEAD = (0.5, 0.5, 0.29, 0.36)  # centre x, y and half axes of the skull (hair on top)
CHEEKS = ((0.36, 0.63), (0.64, 0.63), 0.13, 0.14)  # chubby lower face: two ellipses widen the jaw
EYE_Y, EYE_DX = 0.485, 0.115
BROW_Y = 0.41
NOSE = (0.5, 0.585)
MOUTH_Y = 0.675
# Where a tube taped over the cheeks leaves the mouth: at its (image-left) corner, between a closed mouth's corner
# (0.455) and a crying one's (0.41), so the mouth opens beside the tube rather than behind it.
TUBE_CORNER_X = 0.44
LIGHT = np.array([-0.35, -0.5, 1.0]) / np.linalg.norm([-0.35, -0.5, 1.0])  # from the upper left, towards us
HAIR_COLORS: tuple[tuple[int, int, int], ...] = ((20, 22, 28), (30, 45, 70), (60, 90, 130))  # BGR black/dark/light


@dataclass(frozen=True)
class FaceLook:
    """What stays the same for one infant: skin tone, hair (colour, how much) and the skin's texture seed."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int] = HAIR_COLORS[1]
    hair_density: float = 0.8  # 0 bald .. 1 full
    seed: int = 0


def _gauss(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise with features about size/cells pixels across (bicubic-upsampled grid)."""
    grid = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


@lru_cache(maxsize=16)
def face_base(size: int, look: FaceLook) -> tuple[np.ndarray, np.ndarray]:
    """The still parts of the face at ``size``: (BGR float32 layer, float32 mask in [0, 1]).

    Head, cheeks and ears shaded as a lit ellipsoid, mottled skin, pink cheeks, eye sockets, the nose (bridge
    highlight, shadow under the tip, nostrils) and hair on the crown. Drawn once per infant and size (cached):
    the expression is drawn on a copy each frame, which keeps a CI cohort fast.
    """
    s = size
    rng = np.random.default_rng(look.seed)
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    hx, hy, ax, ay = HEAD
    u, v = (xx - hx) / ax, (yy - hy) / ay
    head = u ** 2 + v ** 2
    (c1x, c1y), (c2x, c2y), cax, cay = CHEEKS
    cheek1 = ((xx - c1x) / cax) ** 2 + ((yy - c1y) / cay) ** 2
    cheek2 = ((xx - c2x) / cax) ** 2 + ((yy - c2y) / cay) ** 2
    ears = np.minimum(((xx - (hx - ax)) / 0.035) ** 2 + ((yy - 0.52) / 0.06) ** 2,
                      ((xx - (hx + ax)) / 0.035) ** 2 + ((yy - 0.52) / 0.06) ** 2)
    inside = np.minimum(np.minimum(head, ears), np.minimum(cheek1, cheek2))
    edge = 1.5 / s / min(ax, ay)  # about a pixel of soft edge
    mask = np.clip((1.0 - inside) / (2 * edge) + 0.5, 0.0, 1.0).astype(np.float32)

    # Shading: the normal of the nearest ellipsoid (head or cheek), lit from the upper left, plus ambient.
    def lit(uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
        z = np.sqrt(np.clip(1.0 - uu ** 2 - vv ** 2, 0.0, None)) * 1.3
        n = np.stack([uu, vv, z], axis=-1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-6
        return np.clip(n @ LIGHT.astype(np.float32), 0.0, 1.0)

    shade = lit(u, v)
    for (cx, cy) in ((c1x, c1y), (c2x, c2y)):
        cu, cv_ = (xx - cx) / cax, (yy - cy) / cay
        shade = np.where(cu ** 2 + cv_ ** 2 < 1.0, np.maximum(shade, lit(cu, cv_) * 0.97), shade)
    shade = (0.45 + 0.65 * shade).astype(np.float32)
    texture = 1.0 + 0.035 * _smooth_noise(rng, s, max(4, s // 6)) + 0.02 * _smooth_noise(rng, s, max(4, s // 2))
    skin = np.array(look.skin, np.float32)
    img = skin[None, None, :] * (shade * texture)[..., None]

    # Pink cheeks, eye sockets, nose.
    blush = np.float32(0.5) * (_gauss(xx, yy, 0.37, 0.6, 0.05, 0.04) + _gauss(xx, yy, 0.63, 0.6, 0.05, 0.04))
    img += blush[..., None] * np.array([-18.0, -22.0, 14.0], np.float32)
    sockets = _gauss(xx, yy, 0.5 - EYE_DX, EYE_Y - 0.01, 0.055, 0.035) + _gauss(xx, yy, 0.5 + EYE_DX, EYE_Y - 0.01,
                                                                                 0.055, 0.035)
    img *= (1.0 - 0.45 * sockets)[..., None]
    nx, ny = NOSE
    img *= (1.0 + 0.10 * _gauss(xx, yy, nx - 0.006, ny - 0.06, 0.012, 0.045)
            + 0.12 * _gauss(xx, yy, nx - 0.008, ny - 0.008, 0.014, 0.01))[..., None]  # bridge and tip highlight
    img *= (1.0 - 0.4 * _gauss(xx, yy, nx, ny + 0.022, 0.035, 0.011)
            - 0.2 * _gauss(xx, yy, nx + 0.035, ny - 0.01, 0.012, 0.03))[..., None]  # under the tip, shadow side
    for side in (-1, 1):
        img *= (1.0 - 0.55 * _gauss(xx, yy, nx + side * 0.02, ny + 0.012, 0.008, 0.005))[..., None]  # nostrils
    # Philtrum and the chin's shadow below the lower lip.
    img *= (1.0 - 0.08 * _gauss(xx, yy, 0.5, 0.635, 0.008, 0.018) - 0.10 * _gauss(xx, yy, 0.5, 0.74, 0.05, 0.014)
            )[..., None]
    # Ears: a darker rim and inner fold.
    for side in (-1, 1):
        img *= (1.0 - 0.25 * _gauss(xx, yy, hx + side * (ax + 0.005), 0.52, 0.012, 0.03))[..., None]

    # Hair on the crown: a ragged hairline, strands as stretched noise, thinner towards the hairline.
    hairline = 0.30 + 0.06 * ((xx - hx) / ax) ** 2 + 0.012 * _smooth_noise(rng, s, max(4, s // 8))
    crown = np.clip((hairline - yy) / 0.04, 0.0, 1.0) * (head < 1.08)
    strands = cv2.resize(rng.normal(0.0, 1.0, size=(max(4, s // 10), max(8, s // 2))).astype(np.float32), (s, s),
                         interpolation=cv2.INTER_CUBIC)
    coverage = np.clip(look.hair_density * crown * (0.85 + 0.25 * strands), 0.0, 1.0).astype(np.float32)
    hair = np.array(look.hair, np.float32)[None, None, :] * (0.7 + 0.5 * shade)[..., None]
    img = img * (1.0 - coverage[..., None]) + hair * coverage[..., None]
    mask = np.maximum(mask, coverage * (head < 1.08)).astype(np.float32)
    np.clip(img, 0.0, 255.0, out=img)
    img.setflags(write=False)
    mask.setflags(write=False)
    return img, mask


def draw_face(size: int, skin: tuple[int, int, int], expr: Expression, *, tube: bool = False,
              cpap: bool = False, pacifier: bool = False, look: FaceLook | None = None,
              tube_taped_cheeks: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Face layer (BGR uint8) and its mask (uint8) at a neutral pose: :func:`face_base` plus the expression
    (brow bulge, eye squeeze, nasolabial furrow, mouth) and the devices on the face.

    ``tube_taped_cheeks``: the endotracheal tube's tape runs from the mouth corners over the cheeks and the tube
    leaves at a corner, so the mouth is seen opening beside it (a silent cry); otherwise the tape covers the mouth
    and the tube leaves from its middle."""
    look = look or FaceLook(skin)
    base, base_mask = face_base(size, look)
    img = base.astype(np.uint8)
    mask = (base_mask * 255).astype(np.uint8)
    s = size
    th = max(1, s // 90)  # lines of a face, not of a cartoon, at a camera's resolution (1 px up to 179 px)
    sk = look.skin
    dark = _blend(sk, 0.5)
    darker = _blend(sk, 0.3)
    brow_col = _mix(_blend(sk, 0.6), look.hair, 0.4)

    # Brow bulge: inner brows drop and draw together, a shaded bulge and vertical furrows between them.
    drop, pull = 0.05 * expr.brow, 0.03 * expr.brow
    for side in (-1, 1):
        pts = np.array([_p(s, 0.5 + side * (0.045 - pull), BROW_Y + drop), _p(s, 0.5 + side * 0.1, BROW_Y - 0.012),
                        _p(s, 0.5 + side * 0.165, BROW_Y + 0.005)], np.int32)
        cv2.polylines(img, [pts], False, brow_col, th + int(expr.brow * 1.5 * th), cv2.LINE_AA)
    if expr.brow > 0.15:
        bulge = img.copy()
        cv2.ellipse(bulge, _p(s, 0.5, BROW_Y - 0.02), (int(0.07 * s), int(0.035 * s)), 0, 0, 360, dark, -1, cv2.LINE_AA)
        cv2.addWeighted(bulge, 0.6 * expr.brow, img, 1 - 0.6 * expr.brow, 0, img)
        for dx in (-0.012, 0.012):
            cv2.line(img, _p(s, 0.5 + dx, BROW_Y - 0.005), _p(s, 0.5 + dx, BROW_Y + 0.05), darker, th, cv2.LINE_AA)

    # Eyes: open (white, iris, pupil, catch-light, upper lid), closed (lid arc and lashes), or squeezed (thick
    # closed line, creases at the outer corner, a bulging lower lid).
    ew, eh = 0.045, 0.022
    for side in (-1, 1):
        cx, cy = 0.5 + side * EYE_DX, EYE_Y
        if expr.squeeze > 0.2:
            bunch = img.copy()  # the orbit bunches up around the shut eye
            cv2.ellipse(bunch, _p(s, cx, cy), (int(0.06 * s), int(0.03 * s)), 0, 0, 360, dark, -1, cv2.LINE_AA)
            cv2.addWeighted(bunch, 0.5 * expr.squeeze, img, 1 - 0.5 * expr.squeeze, 0, img)
            cv2.line(img, _p(s, cx - ew * 1.2, cy), _p(s, cx + ew * 1.2, cy), darker, th + int(expr.squeeze * 2 * th),
                     cv2.LINE_AA)
            for k in (-1, 0, 1):
                a, b = _p(s, cx + side * 0.05, cy + 0.01 * k), _p(s, cx + side * 0.08, cy + 0.022 * k)
                cv2.line(img, a, b, dark, th, cv2.LINE_AA)
            cv2.ellipse(img, _p(s, cx, cy + 0.03), (int(0.042 * s), int(0.011 * s)), 0, 0, 180, dark, th, cv2.LINE_AA)
        elif expr.eyes_open > 0.5:
            cv2.ellipse(img, _p(s, cx, cy), (int(ew * s), int(eh * s)), 0, 0, 360, (225, 228, 232), -1, cv2.LINE_AA)
            r = max(1, int(0.019 * s))
            cv2.circle(img, _p(s, cx, cy + 0.002), r, (45, 55, 70), -1, cv2.LINE_AA)
            cv2.circle(img, _p(s, cx, cy + 0.002), max(1, r // 2), (12, 12, 14), -1, cv2.LINE_AA)
            cv2.circle(img, _p(s, cx - 0.006, cy - 0.006), max(1, r // 4), (245, 245, 245), -1, cv2.LINE_AA)
            cv2.ellipse(img, _p(s, cx, cy), (int(ew * s), int(eh * s)), 0, 180, 360, darker, th + 1, cv2.LINE_AA)
        else:
            cv2.ellipse(img, _p(s, cx, cy - 0.004), (int(ew * s), int(0.012 * s)), 0, 0, 180, darker, th,
                        cv2.LINE_AA)
            if s >= 96:  # lashes, where the camera resolves them
                for k in (-0.5, 0.0, 0.5):
                    a = _p(s, cx + k * ew, cy + 0.006)
                    b = _p(s, cx + k * ew * 1.25, cy + 0.016)
                    cv2.line(img, a, b, darker, th, cv2.LINE_AA)

    # Nasolabial furrow: arcs from the nose wings down to the mouth corners, deeper with intensity.
    if expr.furrow > 0.1:
        col = _blend(sk, 1.0 - 0.6 * expr.furrow)
        for side in (-1, 1):
            pts = np.array([_p(s, 0.5 + side * 0.04, 0.585), _p(s, 0.5 + side * 0.08, 0.635),
                            _p(s, 0.5 + side * 0.09, 0.7)], np.int32)
            cv2.polylines(img, [pts], False, col, th + int(expr.furrow * th), cv2.LINE_AA)

    # Mouth: lips, closed (the line between them) or open (a dark, widening, squarish cry; tongue when wide).
    lips = _mix(_blend(sk, 0.85), (95, 90, 200), 0.35)
    m = expr.mouth
    if m < 0.08:
        cv2.ellipse(img, _p(s, 0.5, MOUTH_Y - 0.004), (int(0.045 * s), int(0.012 * s)), 0, 180, 360, lips, -1,
                    cv2.LINE_AA)
        cv2.ellipse(img, _p(s, 0.5, MOUTH_Y + 0.004), (int(0.04 * s), int(0.014 * s)), 0, 0, 180, lips, -1,
                    cv2.LINE_AA)
        cv2.line(img, _p(s, 0.455, MOUTH_Y), _p(s, 0.545, MOUTH_Y), _blend(lips, 0.55), th, cv2.LINE_AA)
    else:
        axes = (int((0.045 + 0.045 * m) * s), max(1, int((0.01 + 0.065 * m) * s)))
        cv2.ellipse(img, _p(s, 0.5, MOUTH_Y + 0.01 * m), (axes[0] + max(1, th), axes[1] + max(1, th)), 0, 0, 360, lips,
                    -1, cv2.LINE_AA)
        cv2.ellipse(img, _p(s, 0.5, MOUTH_Y + 0.01 * m), axes, 0, 0, 360, (35, 25, 70), -1, cv2.LINE_AA)
        if m > 0.5:
            cv2.ellipse(img, _p(s, 0.5, MOUTH_Y + 0.045 * m), (int(0.035 * s), int(0.016 * s)), 0, 180, 360,
                        (90, 80, 170), -1, cv2.LINE_AA)

    if cpap:  # nasal mask over the nose and nasolabial folds; the knitted bonnet holding it covers brow and crown
        layer, alpha = cpap_bonnet(s)
        a = alpha[..., None]
        img = (img * (1 - a) + layer * a).astype(np.uint8)
        mask = np.maximum(mask, (alpha * 255).astype(np.uint8))
        for side in (-1, 1):  # the tubing, from the mask along the cheeks to the bonnet
            pts = np.array([_p(s, 0.5 + side * 0.05, 0.6), _p(s, 0.5 + side * 0.16, 0.62),
                            _p(s, 0.5 + side * 0.27, 0.46)], np.int32)
            cv2.polylines(img, [pts], False, (185, 175, 165), 2 * th, cv2.LINE_AA)
        cv2.ellipse(img, _p(s, 0.5, 0.6), (int(0.085 * s), int(0.055 * s)), 0, 0, 360, (205, 205, 195), -1, cv2.LINE_AA)
        cv2.ellipse(img, _p(s, 0.5, 0.6), (int(0.085 * s), int(0.055 * s)), 0, 0, 360, (150, 150, 140), th, cv2.LINE_AA)
    if tube:
        # The tube itself leaves the mouth and runs off the chin however it is taped (an intubated face without it
        # is not one a camera sees): from the middle under tape over the mouth, or from a corner of the mouth when
        # the tape runs over the cheeks, so that an open mouth shows its dark inside beside the tube.
        if tube_taped_cheeks:
            for x0, x1 in ((0.31, 0.405), (0.595, 0.69)):
                cv2.rectangle(img, _p(s, x0, 0.648), _p(s, x1, 0.672), (215, 225, 230), -1)  # tape beside the mouth
            exit_x, chin_x = TUBE_CORNER_X, TUBE_CORNER_X - 0.03
        else:
            cv2.rectangle(img, _p(s, 0.39, 0.655), _p(s, 0.61, 0.695), (215, 225, 230), -1)  # tape
            exit_x = chin_x = 0.5
        cv2.line(img, _p(s, exit_x, MOUTH_Y), _p(s, chin_x, 1.0), (225, 235, 240), 3 * th)
        cv2.line(mask, _p(s, exit_x, MOUTH_Y), _p(s, chin_x, 1.0), 255, 3 * th)
    if pacifier:
        cv2.circle(img, _p(s, 0.5, 0.685), int(0.07 * s), (230, 180, 120), -1, cv2.LINE_AA)
        cv2.circle(img, _p(s, 0.5, 0.685), int(0.026 * s), (250, 240, 230), -1, cv2.LINE_AA)
    return img, mask


@lru_cache(maxsize=8)
def cpap_bonnet(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The knitted bonnet that holds a nasal CPAP mask: (BGR float32 layer, alpha in [0, 1]), over the crown
    and the forehead down to the brows, its rim curving down over the temples, ribbed and shaded."""
    s = size
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    hx, hy, ax, ay = HEAD
    head = ((xx - hx) / (ax * 1.06)) ** 2 + ((yy - hy) / (ay * 1.04)) ** 2
    rim = BROW_Y + 0.025 + 0.06 * ((xx - hx) / ax) ** 2
    alpha = np.clip((1.0 - head) * s / 3, 0.0, 1.0) * np.clip((rim - yy) * s / 2, 0.0, 1.0)
    u, v = (xx - hx) / ax, (yy - hy) / ay
    z = np.sqrt(np.clip(1.0 - u ** 2 - v ** 2, 0.0, None))
    shade = 0.6 + 0.45 * np.clip((-0.35 * u - 0.5 * v + z) / 1.2, 0.0, 1.0)
    ribs = 1.0 + 0.07 * np.sin(xx * s * 2 * np.pi / max(3.0, s / 40))
    colour = np.array((170, 190, 150), np.float32)
    layer = colour[None, None, :] * (shade * ribs)[..., None]
    layer = layer.astype(np.float32)
    layer[(rim - yy) * s < 2.5] *= 0.85  # the folded rim
    alpha = alpha.astype(np.float32)
    layer.setflags(write=False)
    alpha.setflags(write=False)
    return layer, alpha


def draw_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """The cot as the camera sees it around the head (float32 BGR): a mattress sheet with a soft light gradient
    and folds, and the swaddling blanket under the chin."""
    s = size
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    sheet = rng.uniform(150, 210, size=3).astype(np.float32)
    bg = np.empty((s, s, 3), np.float32)
    bg[:] = sheet
    bg += (np.linspace(-20, 20, s, dtype=np.float32)[:, None] + 6 * _smooth_noise(rng, s, 5))[..., None]
    blanket = np.array(rng.choice([(200, 170, 150), (170, 200, 210), (210, 210, 215), (160, 190, 170)]), np.float32)
    folds = 1.0 + 0.08 * np.sin(xx * 18 + 4 * _smooth_noise(rng, s, 4))
    under_chin = (((xx - 0.5) / 0.55) ** 2 + ((yy - 1.08) / 0.3) ** 2 < 1.0).astype(np.float32)
    under_chin = cv2.GaussianBlur(under_chin, (0, 0), max(0.5, s / 150))
    cloth = blanket[None, None, :] * folds[..., None] * (0.85 + 0.15 * (1 - yy))[..., None]
    return bg * (1 - under_chin[..., None]) + cloth * under_chin[..., None]


def draw_hand(frame: np.ndarray, cx: float, cy: float, skin: tuple[int, int, int], scale: float = 1.0) -> np.ndarray:
    """The infant's own hand over the face at (cx, cy): a shaded palm with four fingers, in place (``scale``: its
    size relative to a face-framed camera's)."""
    s = frame.shape[0]
    layer = np.zeros((s, s), np.uint8)
    cv2.ellipse(layer, _p(s, cx, cy), (int(0.13 * scale * s), int(0.11 * scale * s)), 30, 0, 360, 255, -1, cv2.LINE_AA)
    for k in range(4):
        a = np.deg2rad(-60 + 22 * k)
        tip = (cx + 0.2 * scale * np.cos(a), cy + 0.2 * scale * np.sin(a))
        cv2.line(layer, _p(s, cx, cy), _p(s, *tip), 255, max(2, int(0.045 * scale * s)), cv2.LINE_AA)
    alpha = layer.astype(np.float32)[..., None] * np.float32(1 / 255)
    yy = np.linspace(1.1, 0.85, s, dtype=np.float32)[:, None, None]  # lit from above
    hand = np.array(skin, np.float32) * 1.05 * yy
    frame *= 1 - alpha
    frame += hand * alpha
    return frame


# The arm during a limb movement, in fractions of a face-framed frame: its hand waves around a point near a bottom
# corner (clear of the face), by this much, and the forearm comes up from below the frame.
LIMB_HAND = (0.13, 0.86)  # left side; mirrored for the right
LIMB_SWING = (0.08, 0.06)


def limb_position(move: LimbMove, t: float) -> tuple[float, float]:
    """Where the waving hand of ``move`` is at time ``t`` (frame fractions, before the camera's transform)."""
    phase = 2 * np.pi * move.freq_hz * (t - move.start_s) + move.phase
    return (0.5 + move.side * (LIMB_HAND[0] - 0.5) + LIMB_SWING[0] * np.sin(phase),
            LIMB_HAND[1] + LIMB_SWING[1] * np.cos(phase))


def draw_limb(frame: np.ndarray, hand: tuple[float, float], side: int, skin: tuple[int, int, int],
              camera: np.ndarray) -> np.ndarray:
    """The infant's forearm and hand at ``hand`` (frame fractions), seen through ``camera`` (2x3 affine in pixels:
    the camera's rotation and distance), in place on the float frame: a shaded rim, then the lit skin."""
    s = frame.shape[0]
    scale = float(np.hypot(camera[0, 0], camera[0, 1]))

    def px(x: float, y: float) -> tuple[int, int]:
        u, v = camera @ np.array([x * s, y * s, 1.0])
        return int(round(u)), int(round(v))

    def width(w: float, extra: int) -> int:
        return max(1, int(w * scale * s)) + extra

    cx, cy = hand
    shade = np.linspace(1.05, 0.8, s, dtype=np.float32)[:, None, None]  # lit from above
    for extra, colour in ((2, np.array(skin, np.float32) * 0.6), (0, np.array(skin, np.float32))):
        layer = np.zeros((s, s), np.uint8)
        cv2.line(layer, px(cx - side * 0.1, 1.15), px(cx, cy + 0.02), 255, width(0.07, 2 * extra), cv2.LINE_AA)
        cv2.ellipse(layer, px(cx, cy), (width(0.055, extra), width(0.045, extra)), 0, 0, 360, 255, -1, cv2.LINE_AA)
        for k in range(4):
            base = (cx + side * (0.02 * k - 0.03), cy)
            cv2.line(layer, px(*base), px(base[0], cy - 0.075), 255, width(0.02, extra), cv2.LINE_AA)
        alpha = layer.astype(np.float32)[..., None] * np.float32(1 / 255)
        frame *= 1 - alpha
        frame += colour * shade * alpha
    return frame


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
                 options: VideoOptions, preterm: bool = False, limb_moves: Sequence[LimbMove] = (),
                 silent_cry: bool = False) -> np.ndarray:
    """Write the video covering recording time [start_s, start_s + duration_s); return per-frame visibility.

    Frame k shows recording time ``start_s + k / fps`` (so the clock offset of the video is start_s).
    A frame is not visible when a hand covers the face or three of the four facial action regions are
    hidden (see :func:`hidden_regions`). ``limb_moves``: when the arm waves into view. ``silent_cry``: an
    intubated infant's cry bursts show as a cry face around the tube.
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
    # The infant's look, and a head turned to one side by up to head_roll_deg for the whole recording.
    look = FaceLook(skin, HAIR_COLORS[int(rng.integers(len(HAIR_COLORS)))], float(rng.uniform(0.2, 1.0)),
                    int(rng.integers(2**31)))
    roll = float(rng.uniform(-options.head_roll_deg, options.head_roll_deg))
    background = draw_background(size, rng)
    optics_sigma = size / 200
    # A small bank of sensor-noise frames drawn once: per-frame noise at full cost dominated rendering.
    noise_bank = rng.normal(0, options.noise_sigma, size=(8, size, size, 3)).astype(np.float32)
    hand_centres: dict[tuple[float, float], tuple[float, float]] = {}
    # The camera: its roll against the cot and its distance (a farther camera shows a smaller face).
    zoom = 1.0 / options.camera_distance
    camera = cv2.getRotationMatrix2D((size / 2, size / 2), options.camera_rotation_deg, zoom)
    silent = intubated and silent_cry
    move_arr = np.array([(m.start_s, m.end_s) for m in limb_moves], dtype=np.float64).reshape(-1, 2)

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
                if silent:  # the silent cry the raters score: the whole cry face, seen around the tube
                    facial = max(facial, SILENT_CRY_FACE[int(in_burst[0, 2] >= 2)])
            else:  # between phonations (or silent cry when intubated) the mouth stays partly open
                mouth = 0.3 * cry + 0.15 * facial
            expr = Expression(brow=facial, squeeze=facial if facial > 0.3 else 0.0, furrow=facial, mouth=mouth,
                              eyes_open=float(items[5]))
            pacifier = _in_any(t, pacifier_spans) and cry == 0
            face, mask = draw_face(size, skin, expr, tube=intubated, cpap=cpap, pacifier=pacifier, look=look,
                                   tube_taped_cheeks=silent)
            if hidden_regions(tube=intubated, cpap=cpap, pacifier=pacifier) >= 3:
                visible[k] = False
            agitation = 0.5 + 0.5 * max(items[3], items[4], items[5])
            m = cv2.getRotationMatrix2D((size / 2, size / 2), roll + options.camera_rotation_deg
                                        + float(ang[k] * agitation), zoom)
            m[:, 2] += (dx[k] * agitation * size * zoom, dy[k] * agitation * size * zoom)
            face = cv2.warpAffine(face, m, (size, size))
            mask = cv2.warpAffine(mask, m, (size, size)).astype(np.float32)[..., None] * np.float32(1 / 255)
            frame = background * (1 - mask) + face.astype(np.float32) * mask
            if optics_sigma >= 0.3:  # the lens: drawn edges are sharper than a camera's
                frame = cv2.GaussianBlur(frame, (0, 0), optics_sigma)
            hand = next(((a, b) for a, b in hand_spans if a <= t < b), None)
            if hand is not None:
                cx, cy = hand_centres.setdefault(hand, (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.35, 0.75))))
                u, v = camera @ np.array([cx * size, cy * size, 1.0])
                frame = draw_hand(frame, float(u) / size, float(v) / size, skin, zoom)
                visible[k] = False
            moving = np.flatnonzero((move_arr[:, 0] <= t) & (t < move_arr[:, 1]))
            if moving.size:
                move = limb_moves[int(moving[0])]
                frame = draw_limb(frame, limb_position(move, t), move.side, skin, camera)
            level = light_levels[int(np.searchsorted(light_times, t, side="right")) - 1] * options.lighting_level
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
