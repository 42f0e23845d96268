"""Face images for the face tracker tests: a schematic drawn face, the synthetic cohort's rendered infant face,
faceless images, and the ``Frame`` that carries one.

Why a plain module: the face tracker and detector tests and the commissioning test draw the same faces, so they
import them from here.
"""
from __future__ import annotations

import cv2
import numpy as np

from appliance.sources.camera import Frame

SKIN = (150, 180, 220)


def drawn_face(cx: int = 320, cy: int = 240, s: float = 0.8, h: int = 480, w: int = 640) -> np.ndarray:
    """A schematic face (skin ellipse, brows, eyes, nose, mouth, blurred) that the frontal Haar cascade accepts
    (CenterFace does not: too schematic; see rendered_face for one both can be asked about)."""
    img = np.full((h, w, 3), 90, np.uint8)
    cv2.ellipse(img, (cx, cy), (int(80 * s), int(105 * s)), 0, 0, 360, SKIN, -1)
    for dx in (-1, 1):
        cv2.ellipse(img, (cx + dx * int(35 * s), cy - int(40 * s)), (int(22 * s), int(6 * s)), 0, 0, 360,
                    (40, 40, 60), -1)
        cv2.ellipse(img, (cx + dx * int(35 * s), cy - int(20 * s)), (int(16 * s), int(9 * s)), 0, 0, 360,
                    (30, 30, 30), -1)
    cv2.ellipse(img, (cx, cy + int(20 * s)), (int(10 * s), int(18 * s)), 0, 0, 360, (120, 150, 190), -1)
    cv2.ellipse(img, (cx, cy + int(55 * s)), (int(30 * s), int(9 * s)), 0, 0, 360, (60, 60, 140), -1)
    return cv2.GaussianBlur(img, (0, 0), 3 * s)


def rendered_face(side: int = 224, roll: float = 0.0, h: int = 240, w: int = 320, x0: int = 48) -> np.ndarray:
    """The synthetic cohort's infant face (models/data/synth_video.py) rendered at ``side`` px, tilted by
    ``roll`` degrees, placed at column ``x0`` of a ``w`` x ``h`` frame of the same cot background."""
    from models.data.synth_video import SKIN_TONES, Expression, FaceLook, draw_background, draw_face

    skin = SKIN_TONES["III-IV"]
    face, mask = draw_face(side, skin, Expression(), look=FaceLook(skin, seed=1))
    m = cv2.getRotationMatrix2D((side / 2, side / 2), roll, 1.0)
    face, mask = cv2.warpAffine(face, m, (side, side)), cv2.warpAffine(mask, m, (side, side))
    bg = cv2.resize(draw_background(side, np.random.default_rng(0)), (w, h))
    alpha = mask.astype(np.float32)[..., None] / 255
    y0 = (h - side) // 2
    bg[y0:y0 + side, x0:x0 + side] = bg[y0:y0 + side, x0:x0 + side] * (1 - alpha) + face * alpha
    return cv2.GaussianBlur(np.clip(bg, 0, 255).astype(np.uint8), (0, 0), side / 200)


def faceless() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    grad = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
    return [np.full((480, 640, 3), 120, np.uint8), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
            cv2.cvtColor(grad, cv2.COLOR_GRAY2BGR)]


def frame(img: np.ndarray, i: int) -> Frame:
    return Frame(t_ns=1_000_000 * i, image=img, index=i)
