"""The quality gate: which modalities of a window may be shown to the model as present, and why not.

Why a separate stage: the window builder reports facts (presence, age, stale, face fraction, gaps); the gate
turns them into the fusion model's presence mask and into the ``quality_flags`` of the published score, in one
place, so that a nurse reading "video_no_face" on the ward screen and the mask the model saw can never
disagree. The gate only ever *removes* modalities: a modality is present iff the window builder says it is
usable (present, quality ok, fresh) *and* the extra signal checks here pass.

Extra checks, beyond :attr:`appliance.scoring.windows.ModalityStatus.usable` (which already refuses a window
filled below ``[scoring] min_fill_*``, flagged ``<modality>_underfilled``):

- video face size: the smallest face of the window, in the camera's own pixels (before the crop was resized
  to the model's size), below ``min_face_px`` is refused (``video_face_too_small``): a 1x1 stream upscaled to
  the crop size is one pixel of information, whatever shape it was given;
- video flatness: face crops with no contrast (grey-level standard deviation below ``min_face_contrast``) or
  no texture (Laplacian standard deviation at 64x64 below ``min_face_detail``) are refused (``video_flat``):
  a covered lens, a blank or uniform frame, a smooth blur;
- audio digital silence (RMS below ``silence_dbfs``, e.g. a capture device delivering zeros): a dead
  microphone must not be scored as "no cry", so audio is removed;
- audio clipping (a share of samples at full scale): flagged only -- a clipped cry is still a cry;
- vitals: the model's vitals branch reads the HR-from-RR grid and SpO2; vitals count as present when either
  the monitor's numerics or the RR intervals are usable.

Flags are short snake_case strings (``<modality>_<problem>``), at most 64 characters (message schema).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from appliance.config import default
from appliance.scoring.windows import ModalityStatus, VideoWindow, Window
from models.vocabulary import MODALITIES


#: Side of the square the texture of a face crop is measured at: the same measure whatever the crop size.
DETAIL_SIZE = 64


@dataclass(frozen=True)
class QualityConfig:
    """Signal limits of the gate (levels in dBFS: a full-scale sine is about -3 dBFS; grey levels 0-255)."""

    silence_dbfs: float = -90.0
    clip_level: float = 0.999
    max_clip_fraction: float = 0.01
    min_face_px: float = default("scoring", "min_face_px")
    min_face_contrast: float = default("scoring", "min_face_contrast")
    min_face_detail: float = default("scoring", "min_face_detail")

    def __post_init__(self) -> None:
        for name in ("min_face_px", "min_face_contrast", "min_face_detail"):
            if not getattr(self, name) >= 0:  # NaN fails this too
                raise ValueError(f"QualityConfig.{name} must be a number >= 0, got {getattr(self, name)!r}")
        if not 0.0 < self.clip_level <= 1.0:
            raise ValueError(f"QualityConfig.clip_level must be in (0, 1], got {self.clip_level!r}")
        if not 0.0 <= self.max_clip_fraction <= 1.0:
            raise ValueError(f"QualityConfig.max_clip_fraction must be in [0, 1], got {self.max_clip_fraction!r}")


@dataclass(frozen=True)
class QualityVerdict:
    """The gate's decision for one window."""

    presence: dict[str, bool]  # video / audio / vitals: what the model may treat as present
    flags: tuple[str, ...]  # why something is missing or degraded (published with the score)
    reasons: dict[str, str]  # modality -> human text (health detail)
    ages_s: dict[str, float | None] = field(default_factory=dict)  # modality -> age of its newest sample
    audio_dbfs: float | None = None

    @property
    def any_present(self) -> bool:
        return any(self.presence.values())

    def detail(self) -> str:
        """One line for the health message when nothing can be scored."""
        return "; ".join(f"{m}: {self.reasons[m]}" for m in MODALITIES if not self.presence[m])


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of float samples in [-1, 1] in dBFS (-inf-safe: silence gives -200)."""
    if samples.size == 0:
        return -200.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * np.log10(max(rms, 1e-10))


def _flag_for(modality: str, status: ModalityStatus) -> str | None:
    """The flag naming why ``status`` is not usable (None when it is)."""
    if status.usable:
        return None
    if not status.present:
        if status.reason.startswith("no face"):
            return f"{modality}_no_face"
        if status.age_s is not None and status.stale:  # it did deliver, but nothing inside the window span
            return f"{modality}_stale"
        return f"{modality}_missing"
    if status.stale:
        return f"{modality}_stale"
    return f"{modality}_{status.problem or 'low_quality'}"


def crop_texture(crop: np.ndarray) -> tuple[float, float]:
    """(contrast, detail) of one BGR face crop: the grey-level standard deviation, and the standard deviation
    of the Laplacian of the crop resampled to DETAIL_SIZE squared (fine texture, independent of crop size)."""
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    small = cv2.resize(grey, (DETAIL_SIZE, DETAIL_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    return float(grey.std()), float(cv2.Laplacian(small, cv2.CV_32F).std())


def video_refusal(video: VideoWindow, cfg: QualityConfig) -> tuple[str, str] | None:
    """(flag, reason) when usable video shows too small a face or a flat picture; None when it may be used.
    Contrast and detail are the medians over the window's distinct crops."""
    if video.face_px is not None and video.face_px < cfg.min_face_px:
        return ("video_face_too_small", f"face {video.face_px:.0f} px in the camera's frame "
                f"(< {cfg.min_face_px:g} px): too little resolution to score")
    if video.frames is None or not len(video.frames):
        return None
    if video.times_ns is not None and len(video.times_ns) == len(video.frames):
        crops = video.frames[np.unique(video.times_ns, return_index=True)[1]]  # one per camera frame used
    else:
        crops = video.frames
    contrast, detail = np.median(np.array([crop_texture(c) for c in crops]), axis=0)
    if contrast < cfg.min_face_contrast or detail < cfg.min_face_detail:
        return ("video_flat", f"flat picture: contrast {contrast:.1f} (min {cfg.min_face_contrast:g}), detail "
                f"{detail:.1f} (min {cfg.min_face_detail:g}) grey levels: lens covered or blank frame?")
    return None


def assess(window: Window, config: QualityConfig | None = None) -> QualityVerdict:
    """Presence mask and quality flags of ``window`` (see module docstring for the rules)."""
    cfg = config or QualityConfig()
    flags: list[str] = []
    reasons: dict[str, str] = {}

    video_ok = window.video.status.usable
    reasons["video"] = window.video.status.reason
    if (f := _flag_for("video", window.video.status)) is not None:
        flags.append(f)
    if video_ok and (refused := video_refusal(window.video, cfg)) is not None:
        video_ok = False
        flags.append(refused[0])
        reasons["video"] = refused[1]

    audio = window.audio
    audio_ok = audio.status.usable
    reasons["audio"] = audio.status.reason
    dbfs: float | None = None
    if (f := _flag_for("audio", audio.status)) is not None:
        flags.append(f)
    if audio.samples is not None and audio.samples.size:
        dbfs = level_dbfs(audio.samples)
        if audio_ok and dbfs < cfg.silence_dbfs:
            audio_ok = False
            reasons["audio"] = f"digital silence ({dbfs:.0f} dBFS < {cfg.silence_dbfs:.0f} dBFS): microphone dead?"
            flags.append("audio_digital_silence")
        clipped = float(np.mean(np.abs(audio.samples) >= cfg.clip_level))
        if clipped > cfg.max_clip_fraction:
            flags.append("audio_clipping")
    if audio_ok and audio.source == "cry":
        flags.append("cry_detected")

    vit, rr = window.vitals.status, window.rr.status
    vitals_ok = vit.usable or rr.usable
    if not vit.usable and (f := _flag_for("vitals", vit)) is not None:
        flags.append(f)
    if not rr.usable and (f := _flag_for("rr", rr)) is not None:
        flags.append(f)
    reasons["vitals"] = "ok" if vitals_ok else f"numerics: {vit.reason}; RR: {rr.reason}"

    ages = {"video": window.video.status.age_s, "audio": audio.status.age_s,
            "vitals": vit.age_s if vit.age_s is not None else rr.age_s}
    presence = {"video": video_ok, "audio": audio_ok, "vitals": vitals_ok}
    return QualityVerdict(presence, tuple(flags), reasons, ages, dbfs)
