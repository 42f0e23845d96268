"""VGGish log-Mel front end in numpy: waveform -> log-Mel frames -> 96x64 patches -> padded batch.

Why numpy and not torch: the front end must match the recipe the published VGGish weights were trained
on (tensorflow/models ``research/audioset/vggish``: ``mel_features.py`` and ``vggish_input.py``), and it
stays outside the inference engine (TensorRT parses no STFT), so training, export checks and the device
all call these same functions on the CPU.

The recipe, step by step (constants below):

* mono float in [-1, 1] at 16 kHz (int16 is scaled by 1/32768, multi-channel is averaged, any other rate
  is resampled);
* frames of 400 samples (25 ms) every 160 samples (10 ms), no padding: a tail shorter than a hop is
  dropped, exactly like ``mel_features.frame``;
* periodic Hann window, ``|rfft|`` with 512 points (magnitude, not power) -> 257 bins;
* 64 HTK-mel triangles between 125 and 7500 Hz, built in the mel domain with unit peaks and no area
  normalisation, the DC bin forced to zero weight (``spectrogram_to_mel_matrix``);
* ``log(mel + 0.01)``;
* non-overlapping patches of 96 frames (0.96 s), tail dropped (``waveform_to_examples``).
"""

from __future__ import annotations

from math import gcd
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import get_window, resample_poly
from scipy.sparse import csr_matrix

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms at 16 kHz
FFT_LENGTH = 512  # next power of two above the window
MEL_BANDS = 64
MEL_LOW_HZ = 125.0
MEL_HIGH_HZ = 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s of 10 ms hops
# Shortest input that yields one patch: 96 frames need 400 + 95 * 160 samples at 16 kHz.
MIN_PATCH_SAMPLES = WINDOW_SAMPLES + (PATCH_FRAMES - 1) * HOP_SAMPLES
# Value of an all-zero (digitally silent) patch after log(0 + 0.01): what padding is filled with.
SILENCE_LOG_MEL = float(np.log(LOG_OFFSET))
# Float input beyond this peak is almost surely int16-scale samples stored as float, not clipping.
_FLOAT_PEAK_LIMIT = 1.5
_MAX_CHANNELS = 8

_HTK_BREAK_HZ = 700.0
_HTK_Q = 1127.0


def hertz_to_mel(freqs_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, ``1127 ln(1 + f / 700)``: the scale VGGish's filterbank is laid out on."""
    return _HTK_Q * np.log1p(np.asarray(freqs_hz, dtype=np.float64) / _HTK_BREAK_HZ)


def mel_matrix(
    num_bins: int = FFT_LENGTH // 2 + 1,
    sample_rate: int = SAMPLE_RATE,
    mel_bands: int = MEL_BANDS,
    low_hz: float = MEL_LOW_HZ,
    high_hz: float = MEL_HIGH_HZ,
) -> np.ndarray:
    """(num_bins, mel_bands) matrix M such that ``magnitudes @ M`` is the mel spectrogram.

    Triangles are computed on the mel value of each FFT bin (not on Hz), peak 1, no area
    normalisation; the DC bin gets zero weight because HTK excludes it. These details change the
    features by more than the VGGish weights tolerate, so they follow ``mel_features.py`` exactly.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= low_hz < high_hz <= nyquist:
        raise ValueError(f"mel band edges must satisfy 0 <= low_hz < high_hz <= Nyquist ({nyquist}); got {low_hz}, {high_hz}")
    bins_mel = hertz_to_mel(np.linspace(0.0, nyquist, num_bins))[:, None]
    edges = np.linspace(hertz_to_mel(low_hz), hertz_to_mel(high_hz), mel_bands + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights


_MEL_MATRIX = mel_matrix()
# The same matrix as CSR (64 x 257, 461 of its 16448 weights are non-zero), applied as (M^T |X|^T)^T: the
# product then runs in the calling thread. As a dense product it went to OpenBLAS, which splits even this
# small a product over both cores; next to the camera, the clip pre-processing and the engines, the split
# waits for a second core to be scheduled (a window's log-Mel took 12 ms single-threaded and 34 ms with
# OpenBLAS's two threads at load average 4). Same products, same sums: the result was bit-identical.
_MEL_SPARSE_T = csr_matrix(_MEL_MATRIX.T)
_WINDOW = get_window("hann", WINDOW_SAMPLES, fftbins=True)  # fftbins=True: periodic, as VGGish uses


def to_mono_16k(x: np.ndarray, sr: int | float) -> np.ndarray:
    """Validate audio and bring it to VGGish's input: float64 mono in [-1, 1] at 16 kHz.

    ``x`` is (samples,) or (samples, channels) -- the layout of ``scipy.io.wavfile``, ``soundfile`` and
    ``vggish_input`` -- as int16 (scaled by 1/32768, as ``vggish_input.wavfile_to_examples`` does) or
    float in [-1, 1]. Channels are averaged.

    Resampling uses ``scipy.signal.resample_poly``. VGGish itself used ``resampy`` (a band-limited sinc
    interpolator); polyphase FIR resampling is the field's standard method for rational ratios (all audio
    rates are: 44.1k->16k is 160/441), gives the same passband up to 7.5 kHz where the mel bands end, and
    keeps a dependency off the device image.
    """
    x = np.asarray(x)
    if x.ndim not in (1, 2):
        raise ValueError(f"audio must be 1-D (samples,) or 2-D (samples, channels); got shape {x.shape}")
    if x.ndim == 2 and x.shape[1] > _MAX_CHANNELS:
        raise ValueError(
            f"audio of shape {x.shape} has {x.shape[1]} channels; expected (samples, channels) with at most "
            f"{_MAX_CHANNELS} channels -- transpose a (channels, samples) array"
        )
    if x.size == 0:
        raise ValueError("audio is empty")
    sr_int = int(sr) if float(sr).is_integer() else None
    if sr_int is None or sr_int <= 0:
        raise ValueError(f"sample rate must be a positive whole number of Hz; got {sr!r}")
    if x.dtype == np.int16:
        x = x.astype(np.float64) / 32768.0
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("audio contains NaN or infinite samples")
        peak = float(np.max(np.abs(x)))
        if peak > _FLOAT_PEAK_LIMIT:
            raise ValueError(
                f"float audio must be in [-1, 1]; got peak {peak:.4g} (int16-scale samples? pass them as int16)"
            )
    else:
        raise ValueError(f"audio dtype must be int16 or floating point; got {x.dtype}")
    if x.ndim == 2:
        x = x.mean(axis=1)
    if sr_int != SAMPLE_RATE:
        g = gcd(sr_int, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr_int // g)
    return x


def _log_mel_16k(x: np.ndarray) -> np.ndarray:
    """Log-Mel frames of mono 16 kHz audio already validated by :func:`to_mono_16k`."""
    if x.shape[0] < WINDOW_SAMPLES:
        raise ValueError(
            f"audio too short: {x.shape[0]} samples at 16 kHz, need at least {WINDOW_SAMPLES} (25 ms) for one frame"
        )
    frames = sliding_window_view(x, WINDOW_SAMPLES)[::HOP_SAMPLES]
    magnitude = np.abs(np.fft.rfft(frames * _WINDOW, FFT_LENGTH))
    mel = np.asarray(_MEL_SPARSE_T @ magnitude.T).T  # = magnitude @ _MEL_MATRIX, without BLAS threads
    return np.log(mel + LOG_OFFSET).astype(np.float32)


def waveform_to_log_mel(x: np.ndarray, sr: int | float) -> np.ndarray:
    """(frames, 64) float32 log-Mel spectrogram of ``x`` at rate ``sr`` (10 ms per frame)."""
    return _log_mel_16k(to_mono_16k(x, sr))


def log_mel_patches(x: np.ndarray, sr: int | float) -> np.ndarray:
    """(N, 96, 64) float32 non-overlapping 0.96 s VGGish patches of ``x``; the tail is dropped.

    Raises ValueError when the audio is shorter than one patch (0.975 s at 16 kHz), since a shorter
    segment has no VGGish example at all.
    """
    x16 = to_mono_16k(x, sr)
    if x16.shape[0] < MIN_PATCH_SAMPLES:
        raise ValueError(
            f"audio too short for one patch: {x16.shape[0]} samples at 16 kHz "
            f"({x16.shape[0] / SAMPLE_RATE:.3f} s), need at least {MIN_PATCH_SAMPLES} ({MIN_PATCH_SAMPLES / SAMPLE_RATE:.3f} s)"
        )
    log_mel = _log_mel_16k(x16)
    n = log_mel.shape[0] // PATCH_FRAMES
    return np.ascontiguousarray(log_mel[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, MEL_BANDS))


def pad_patches(
    segments: Sequence[np.ndarray], max_patches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Batch variable-length patch sequences into fixed shapes for the engine.

    Returns ``patches`` (B, max_patches, 96, 64) float32 and ``pad_mask`` (B, max_patches) bool, True
    where a slot is padding. Valid patches sit first, in time order; a segment longer than
    ``max_patches`` keeps its most recent patches (the cry the score is about is the latest one). A
    segment may have zero patches (no cry audio): its row is all padding. Padding is filled with the
    log-Mel of digital silence, so a consumer that forgot the mask sees silence, not a fake signal.
    """
    if max_patches < 1:
        raise ValueError(f"max_patches must be >= 1; got {max_patches}")
    if len(segments) == 0:
        raise ValueError("pad_patches needs at least one segment")
    patches = np.full((len(segments), max_patches, PATCH_FRAMES, MEL_BANDS), SILENCE_LOG_MEL, dtype=np.float32)
    pad_mask = np.ones((len(segments), max_patches), dtype=bool)
    for i, seg in enumerate(segments):
        seg = np.asarray(seg)
        if seg.ndim != 3 or seg.shape[1:] != (PATCH_FRAMES, MEL_BANDS):
            raise ValueError(f"segment {i} must have shape (N, {PATCH_FRAMES}, {MEL_BANDS}); got {seg.shape}")
        if not np.all(np.isfinite(seg)):
            raise ValueError(f"segment {i} contains NaN or infinite values")
        kept = seg[-max_patches:] if seg.shape[0] > 0 else seg
        n = kept.shape[0]
        patches[i, :n] = kept
        pad_mask[i, :n] = False
    return patches, pad_mask
