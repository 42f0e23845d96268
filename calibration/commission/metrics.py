"""Commissioning metrics and their pass/fail rules: pure functions on what the sensors delivered.

Why separate from collection: the numbers (brightness, blur, noise floor, plausible vitals...) are the
commissioning engineer's evidence, so they must be testable on known arrays without a camera, and the
thresholds must live in one place with the reason for each. Where the scoring pipeline already has a limit
(face share of a window, digital silence, clipping, RR count), the commissioning check uses *that* limit:
a bed that passes commissioning is one whose windows the quality gate will accept.

A check has three outcomes: ``pass``, ``warn`` (worth a look, but scoring works: e.g. a Masimo gives no ECG,
so no HRV) and ``fail`` (fix before clinical use; ``neopain commission`` exits 1).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from appliance.scoring.quality import QualityConfig, level_dbfs
from appliance.scoring.windows import WindowConfig

_GATE = QualityConfig()
_WINDOWS = WindowConfig()

# -- camera ---------------------------------------------------------------------------------------------------
#: Share of frames with a face crop: the window builder rejects video windows below this share.
MIN_FACE_FRACTION = _WINDOWS.min_face_fraction
#: Mean grey level (0-255) of the face region. Below ~40 a night-lit cot is mostly sensor noise to the
#: detector and the network; above ~220 the skin saturates (phototherapy lamp, glare) and expression is lost.
BRIGHTNESS_RANGE = (40.0, 220.0)
#: RMS contrast (standard deviation of grey, 0-255) of the face region. A covered lens, a fogged incubator
#: wall or a uniform blanket leaves sensor noise only (below ~10); faces measure 15-45 (the synthetic bed's
#: rendered faces ~25, drawn test faces ~37).
MIN_CONTRAST = 10.0
#: Variance of the Laplacian of the face region resized to BLUR_SIDE^2. Out-of-focus or motion-smeared
#: crops lose the brow bulge / eye squeeze / nasolabial furrow the video model reads. Measured on the
#: configured 224 px crop: in-focus faces 30-60; a defocus of ~1.5 px (at 128 px) already drops below 10.
#: Small crops (e.g. 64 px) are enlarged to BLUR_SIDE and read about half as sharp.
MIN_BLUR_VARIANCE = 10.0
#: The region is resized to this side before the Laplacian, so the number does not depend on the camera's
#: resolution or the configured crop size (a 224 px and a 32 px crop of one face read alike).
BLUR_SIDE = 128

# -- microphone -----------------------------------------------------------------------------------------------
#: Block length of the level trace; the noise floor is the NOISE_PERCENTILE-th percentile of block levels
#: (the quiet moments between cries, alarms and voices).
LEVEL_BLOCK_S = 0.1
NOISE_PERCENTILE = 10.0
#: Below this the capture is digital silence (the quality gate's own limit): microphone dead or muted.
MIN_NOISE_FLOOR_DBFS = _GATE.silence_dbfs
#: Above this even the quiet moments are loud: the input gain is too high or the microphone sits next to a
#: fan, pump or alarm speaker, and a cry (20-30 dB above the room) will clip. A quiet NICU (~45 dBA) at a
#: gain that leaves headroom for a cry sits well below.
MAX_NOISE_FLOOR_DBFS = -30.0
#: Samples at full scale (the gate's clip level): above the gate's tolerated share, the gain is too high.
CLIP_LEVEL = _GATE.clip_level
MAX_CLIP_FRACTION = _GATE.max_clip_fraction
#: Samples received / samples expected over the capture: less means overruns or device loss, and the
#: window builder drops audio windows under this coverage.
MIN_AUDIO_COVERAGE = _WINDOWS.min_audio_coverage

# -- monitor --------------------------------------------------------------------------------------------------
#: Plausible newborn values at a calm bed (reference: 100-160 term, 120-180 preterm, with room for brief
#: brady/tachycardia). A steady value outside means the probe is not on this infant or the channel is wrong.
HR_RANGE = (80.0, 220.0)
SPO2_RANGE = (70.0, 100.0)
#: Share of numerics updates that must carry a plausible value (HR, and SpO2 separately). Stricter than the
#: window builder's 0.5: at commissioning the infant is calm and the probe freshly placed.
MIN_VALID_VITALS_FRACTION = 0.8
#: RR intervals needed for HRV: the window builder's minimum for a 30 s window.
MIN_RR_COUNT = _WINDOWS.min_rr_count
#: Protocols that carry an ECG wave (and so RR intervals); for the others a missing ECG is a warning only.
WAVE_PROTOCOLS = ("intellivue",)


@dataclass(frozen=True)
class ImageStats:
    """Brightness (mean grey), RMS contrast (std of grey) and sharpness (variance of the Laplacian)."""

    brightness: float
    contrast: float
    blur_variance: float


def image_stats(image: np.ndarray) -> ImageStats:
    """Statistics of one BGR (or grey) uint8 region; see the constants above for what they catch."""
    if image is None or image.size == 0 or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image_stats: need a non-empty uint8 grey or BGR image, got "
                         f"{getattr(image, 'dtype', None)} {getattr(image, 'shape', None)}")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    # area-average when shrinking; linear when enlarging (nearest-like INTER_AREA upscaling adds block edges
    # that read as sharpness)
    interp = cv2.INTER_AREA if min(gray.shape[:2]) >= BLUR_SIDE else cv2.INTER_LINEAR
    small = cv2.resize(gray, (BLUR_SIDE, BLUR_SIDE), interpolation=interp)
    blur = float(cv2.Laplacian(small, cv2.CV_64F).var())
    return ImageStats(float(gray.mean()), float(gray.std()), blur)


def as_float_audio(samples: np.ndarray) -> np.ndarray:
    """int16 PCM or float samples -> float64 in [-1, 1] (the scale the quality gate uses)."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples.astype(np.float64) / 32768.0
    return samples.astype(np.float64)


def level_trace(samples: np.ndarray, rate: int, block_s: float = LEVEL_BLOCK_S) -> np.ndarray:
    """RMS level in dBFS of consecutive ``block_s`` blocks (tail shorter than a block dropped)."""
    x = as_float_audio(samples)
    n = int(round(block_s * rate))
    if n < 1:
        raise ValueError(f"level_trace: block of {block_s} s at {rate} Hz holds no sample")
    blocks = x[: x.size // n * n].reshape(-1, n)
    return np.array([level_dbfs(b) for b in blocks], dtype=np.float64)


def noise_floor_dbfs(levels: np.ndarray, percentile: float = NOISE_PERCENTILE) -> float | None:
    """The ``percentile``-th percentile of the block levels; None without a single block."""
    return float(np.percentile(levels, percentile)) if len(levels) else None


def clip_fraction(samples: np.ndarray, level: float = CLIP_LEVEL) -> float:
    """Share of samples at (or beyond) ``level`` of full scale."""
    x = as_float_audio(samples)
    return float(np.mean(np.abs(x) >= level)) if x.size else 0.0


def plausible_fraction(values: Sequence[float | None], lo: float, hi: float) -> float:
    """Share of updates whose value is present and within ``[lo, hi]`` (0 for no updates)."""
    if not len(values):
        return 0.0
    ok = [v is not None and np.isfinite(v) and lo <= v <= hi for v in values]
    return float(np.mean(ok))


# -- checks ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One line of the commissioning table."""

    group: str  # camera / microphone / monitor
    name: str
    value: float | str | None
    unit: str
    limit: str  # the threshold in words, e.g. ">= 75 %"
    status: str  # pass / warn / fail
    why: str  # what a failure means at the bed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def value_text(self) -> str:
        if self.value is None:
            return "-"
        if isinstance(self.value, float):
            return f"{self.value:.3g}" if abs(self.value) < 1000 else f"{self.value:.0f}"
        return str(self.value)


def _status(ok: bool, *, warn_only: bool = False) -> str:
    return "pass" if ok else ("warn" if warn_only else "fail")


@dataclass
class CameraSummary:
    """What the camera delivered over the capture."""

    frames: int
    face_frames: int
    brightness: float | None  # medians over frames of the face region (the whole frame when no face)
    contrast: float | None
    blur_variance: float | None
    fps: float
    mode: str  # "detect" or "roi"
    detector: str | None = None  # the face detector that ran ("centerface", "haar"); None if none was made
    detector_fallback: str | None = None  # why it is not the configured one
    config_error: str | None = None  # e.g. camera.face_roi beyond the frame: why no crop was taken at all

    @property
    def face_fraction(self) -> float:
        return self.face_frames / self.frames if self.frames else 0.0


@dataclass
class MicrophoneSummary:
    samples: int
    expected_samples: int
    noise_floor_dbfs: float | None
    median_dbfs: float | None
    clip_fraction: float

    @property
    def coverage(self) -> float:
        return self.samples / self.expected_samples if self.expected_samples else 0.0


@dataclass
class MonitorSummary:
    protocol: str | None
    samples: int
    hr_plausible: float
    spo2_plausible: float
    ecg_chunks: int
    rr_count: int
    rr_median_ms: float | None
    rejects: dict[str, int]


def camera_checks(s: CameraSummary) -> list[Check]:
    """Framing and image quality of the face region."""
    g = "camera"
    out = [Check(g, "frames received", float(s.frames), "frames", "> 0", _status(s.frames > 0),
                 "no frame at all: camera unplugged, wrong camera.source, or no permission (group video)")]
    roi = s.mode == "roi"
    if s.detector is not None:
        out.append(Check(g, "face detector", s.detector, "", "the configured one", _status(not s.detector_fallback,
                         warn_only=True), f"fallback: {s.detector_fallback}"))
    why = ("no face found inside camera.face_roi: it misses the face, or the face is covered or turned away; "
           "adjust camera.face_roi or the camera" if roi else
           "the face is out of frame, too small, turned away or covered: reposition the camera")
    out.append(Check(g, "face found" + (" (fixed ROI)" if roi else ""), 100.0 * s.face_fraction, "% of frames",
                     f">= {100 * MIN_FACE_FRACTION:.0f} %", _status(s.frames > 0 and s.face_fraction >= MIN_FACE_FRACTION),
                     s.config_error or why))
    lo, hi = BRIGHTNESS_RANGE
    b = s.brightness
    out.append(Check(g, "brightness", b, "mean grey 0-255", f"{lo:.0f}..{hi:.0f}",
                     _status(b is not None and lo <= b <= hi), "too dark or glare: change lighting or exposure"))
    out.append(Check(g, "contrast", s.contrast, "RMS grey", f">= {MIN_CONTRAST:.0f}",
                     _status(s.contrast is not None and s.contrast >= MIN_CONTRAST),
                     "flat image: lens covered, fogged or facing a blanket"))
    out.append(Check(g, "sharpness", s.blur_variance, "var(Laplacian)", f">= {MIN_BLUR_VARIANCE:.0f}",
                     _status(s.blur_variance is not None and s.blur_variance >= MIN_BLUR_VARIANCE),
                     "blurred face region: refocus the lens or steady the mount"))
    return out


def microphone_checks(s: MicrophoneSummary) -> list[Check]:
    """Level, clipping and continuity of the cry microphone."""
    g = "microphone"
    nf = s.noise_floor_dbfs
    return [
        Check(g, "audio received", 100.0 * s.coverage, "% of expected samples", f">= {100 * MIN_AUDIO_COVERAGE:.0f} %",
              _status(s.coverage >= MIN_AUDIO_COVERAGE),
              "samples lost (overruns, device loss) or no audio: check microphone.device and group audio"),
        Check(g, "noise floor", nf, f"dBFS (p{NOISE_PERCENTILE:.0f} of {1000 * LEVEL_BLOCK_S:.0f} ms RMS)",
              f"{MIN_NOISE_FLOOR_DBFS:.0f}..{MAX_NOISE_FLOOR_DBFS:.0f} dBFS",
              _status(nf is not None and MIN_NOISE_FLOOR_DBFS < nf <= MAX_NOISE_FLOOR_DBFS),
              "digital silence (muted/dead microphone) or gain too high / noise source next to the microphone"),
        Check(g, "clipping", 100.0 * s.clip_fraction, "% of samples at full scale",
              f"<= {100 * MAX_CLIP_FRACTION:g} %", _status(s.clip_fraction <= MAX_CLIP_FRACTION),
              "input gain too high: cries will be distorted"),
    ]


def monitor_checks(s: MonitorSummary) -> list[Check]:
    """Link, plausibility of the numerics, and the ECG wave that RR intervals (HRV) come from."""
    g = "monitor"
    lo, hi = HR_RANGE
    slo, shi = SPO2_RANGE
    linked = s.protocol is not None and s.samples > 0
    waves = s.protocol in WAVE_PROTOCOLS
    rejects = ", ".join(f"{k} x{v}" for k, v in sorted(s.rejects.items())) or "none"
    return [
        Check(g, "protocol", s.protocol or "none", f"{s.samples} numerics updates", "recognised, with data",
              _status(linked), f"no usable data on the serial port (rejected: {rejects}): check cable, "
              "monitor.port, baud rate and the monitor's export setting"),
        Check(g, "HR plausible", 100.0 * s.hr_plausible, "% of updates", f">= {100 * MIN_VALID_VITALS_FRACTION:.0f} % "
              f"in {lo:.0f}..{hi:.0f} /min", _status(s.hr_plausible >= MIN_VALID_VITALS_FRACTION),
              "HR missing or implausible: ECG leads / probe off, or not this infant's monitor"),
        Check(g, "SpO2 plausible", 100.0 * s.spo2_plausible, "% of updates",
              f">= {100 * MIN_VALID_VITALS_FRACTION:.0f} % in {slo:.0f}..{shi:.0f} %",
              _status(s.spo2_plausible >= MIN_VALID_VITALS_FRACTION), "SpO2 missing or implausible: check the probe"),
        Check(g, "ECG wave / RR intervals", float(s.rr_count), f"RR intervals ({s.ecg_chunks} ECG chunks)",
              f">= {MIN_RR_COUNT}", _status(s.rr_count >= MIN_RR_COUNT, warn_only=not waves),
              "no ECG II wave or no beats found in it: check ECG leads and the monitor's wave export (HRV "
              "unavailable)" if waves else f"{s.protocol or 'this monitor'} sends no ECG wave: no HRV, HR from "
              "numerics only"),
    ]


def overall(checks: Sequence[Check]) -> str:
    """``fail`` if any check failed, else ``warn`` if any warned, else ``pass``."""
    states = {c.status for c in checks}
    return "fail" if "fail" in states else ("warn" if "warn" in states else "pass")
