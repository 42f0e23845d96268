"""Raw window -> model inputs: the one conversion used by training, evaluation and the device.

A window at the bedside (``appliance.scoring.windows``) and a window from a dataset (``models.data.loader``)
carry the same raw data — face crops, audio at its own rate, RR intervals and SpO2 with their times —
and both come through :func:`model_inputs`, so the device feeds the engines exactly what training fed
the network. Arrays are returned without a batch dimension, as numpy (engines take numpy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.configs import MODALITIES, ModelConfig
from models.features.audio import MIN_PATCH_SAMPLES, SAMPLE_RATE, log_mel_patches, pad_patches
from models.features.video import clip_array
from models.features.vitals import build_vitals_grid, hrv_features


@dataclass(frozen=True)
class RawWindow:
    """What a window holds before pre-processing; ``None`` for a modality that is absent.

    Times are seconds on one clock; ``end_s`` is the newest moment of the window.
    """

    end_s: float
    frames: np.ndarray | None  # (T, H, W, 3) uint8 face crops (RGB unless frames_bgr), or camera frames + face_box
    audio: np.ndarray | None  # mono samples (float in [-1, 1] or int16)
    audio_rate: int
    rr_ms: np.ndarray  # RR intervals (ms), each stamped at the beat that closes it
    rr_times_s: np.ndarray
    spo2_pct: np.ndarray
    spo2_times_s: np.ndarray
    presence: dict[str, bool]  # video / audio / vitals usable (fresh, good quality)
    # Where the face is in ``frames`` (x, y, w, h), when they are whole camera frames rather than crops: the
    # crop is then cut before any pixel is converted or resized. None: the frames are the face crops.
    face_box: tuple[int, int, int, int] | None = None
    frames_bgr: bool = False  # OpenCV's channel order; swapped during normalisation, on crop-sized pixels


def model_inputs(window: RawWindow, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The estimator's six inputs for one window (no batch dimension), in ``INPUT_NAMES`` order.

    An absent modality gets neutral filler (zeros / fully padded audio) and presence 0: the fusion
    never attends to it, so the filler cannot change the score.
    """
    v, a = cfg.video, cfg.audio
    presence = dict(window.presence)
    if window.frames is not None and len(window.frames):
        clip = clip_array(window.frames, v, box=window.face_box, bgr=window.frames_bgr)
    else:
        clip = np.zeros((3, v.frames, v.crop_size, v.crop_size), dtype=np.float32)
        presence["video"] = False
    audio = window.audio
    long_enough = audio is not None and len(audio) * SAMPLE_RATE >= MIN_PATCH_SAMPLES * window.audio_rate
    segments = [log_mel_patches(audio, window.audio_rate)] if long_enough else [np.zeros((0, a.patch_frames, a.mel_bands), np.float32)]
    patches, pad_mask = pad_patches(segments, a.max_patches)
    if not long_enough:
        presence["audio"] = False
    series = build_vitals_grid(
        window.rr_ms, window.rr_times_s, window.spo2_pct, window.spo2_times_s, window.end_s, cfg.vitals
    )
    in_window = np.asarray(window.rr_times_s) > window.end_s - cfg.vitals.window_s
    hrv = hrv_features(np.asarray(window.rr_ms)[in_window]).normalised()
    if not series[1].any() and not series[3].any():
        presence["vitals"] = False
    return {
        "clip": clip,
        "audio_patches": patches[0],
        "audio_pad_mask": pad_mask[0],
        "vitals_series": series,
        "hrv": hrv,
        "presence": np.array([float(bool(presence.get(m, False))) for m in MODALITIES], dtype=np.float32),
    }
