"""The log-Mel front end against an independent port of VGGish's own recipe.

The reference below is a direct, loop-for-loop port of tensorflow/models research/audioset/vggish
``mel_features.py`` (frame, periodic_hann, stft_magnitude, hertz_to_mel, spectrogram_to_mel_matrix,
log_mel_spectrogram) and of ``vggish_input.waveform_to_examples``; the code under test is written
differently (sliding windows, scipy's window, a vectorised filterbank), so agreement is evidence, not
a tautology.
"""

from __future__ import annotations

import numpy as np
import pytest

from models.features.audio import (
    MIN_PATCH_SAMPLES,
    SILENCE_LOG_MEL,
    log_mel_patches,
    pad_patches,
    waveform_to_log_mel,
)

# ---- reference port of mel_features.py ------------------------------------------------------------


def ref_frame(data: np.ndarray, window_length: int, hop_length: int) -> np.ndarray:
    num_samples = data.shape[0]
    num_frames = 1 + int(np.floor((num_samples - window_length) / hop_length))
    shape = (num_frames, window_length) + data.shape[1:]
    strides = (data.strides[0] * hop_length,) + data.strides
    return np.lib.stride_tricks.as_strided(data, shape=shape, strides=strides)


def ref_periodic_hann(window_length: int) -> np.ndarray:
    return 0.5 - (0.5 * np.cos(2 * np.pi / window_length * np.arange(window_length)))


def ref_stft_magnitude(signal: np.ndarray, fft_length: int, hop_length: int, window_length: int) -> np.ndarray:
    frames = ref_frame(signal, window_length, hop_length)
    window = ref_periodic_hann(window_length)
    return np.abs(np.fft.rfft(frames * window, int(fft_length)))


def ref_hertz_to_mel(frequencies_hertz):
    return 1127.0 * np.log(1.0 + (frequencies_hertz / 700.0))


def ref_spectrogram_to_mel_matrix(num_mel_bins, num_spectrogram_bins, audio_sample_rate, lower_edge_hertz, upper_edge_hertz):
    nyquist_hertz = audio_sample_rate / 2.0
    spectrogram_bins_hertz = np.linspace(0.0, nyquist_hertz, num_spectrogram_bins)
    spectrogram_bins_mel = ref_hertz_to_mel(spectrogram_bins_hertz)
    band_edges_mel = np.linspace(
        ref_hertz_to_mel(lower_edge_hertz), ref_hertz_to_mel(upper_edge_hertz), num_mel_bins + 2
    )
    mel_weights_matrix = np.empty((num_spectrogram_bins, num_mel_bins))
    for i in range(num_mel_bins):
        lower_edge_mel, center_mel, upper_edge_mel = band_edges_mel[i : i + 3]
        lower_slope = (spectrogram_bins_mel - lower_edge_mel) / (center_mel - lower_edge_mel)
        upper_slope = (upper_edge_mel - spectrogram_bins_mel) / (upper_edge_mel - center_mel)
        mel_weights_matrix[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    mel_weights_matrix[0, :] = 0.0  # HTK excludes the DC bin
    return mel_weights_matrix


def ref_log_mel_spectrogram(data, audio_sample_rate=16000, log_offset=0.01, window_length_secs=0.025, hop_length_secs=0.010):
    window_length_samples = int(round(audio_sample_rate * window_length_secs))
    hop_length_samples = int(round(audio_sample_rate * hop_length_secs))
    fft_length = 2 ** int(np.ceil(np.log(window_length_samples) / np.log(2.0)))
    spectrogram = ref_stft_magnitude(data, fft_length, hop_length_samples, window_length_samples)
    mel = np.dot(
        spectrogram,
        ref_spectrogram_to_mel_matrix(64, spectrogram.shape[1], audio_sample_rate, 125.0, 7500.0),
    )
    return np.log(mel + log_offset)


def ref_examples(data: np.ndarray) -> np.ndarray:
    """vggish_input.waveform_to_examples at 16 kHz: 96-frame examples, hop 96."""
    return ref_frame(ref_log_mel_spectrogram(data), 96, 96)


# ---- fixtures ------------------------------------------------------------------------------------


def sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return amp * np.sin(2 * np.pi * freq * t)


def mel_band_of(freq_hz: float) -> int:
    """The band whose centre (in mel) is nearest ``freq_hz``, from the recipe's band edges."""
    centres = np.linspace(ref_hertz_to_mel(125.0), ref_hertz_to_mel(7500.0), 66)[1:-1]
    return int(np.argmin(np.abs(centres - ref_hertz_to_mel(freq_hz))))


# ---- agreement with the reference ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sine_1k", "noise"])
def test_log_mel_matches_reference_recipe(kind: str) -> None:
    rng = np.random.default_rng(1)
    # 2.05 s: deliberately not a whole number of hops, so the no-padding framing is exercised.
    x = sine(1000.0, 16000, 2.05) if kind == "sine_1k" else rng.uniform(-1.0, 1.0, 32800)
    ours = waveform_to_log_mel(x, 16000)
    ref = ref_log_mel_spectrogram(x)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape == (1 + (x.shape[0] - 400) // 160, 64)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

    patches = log_mel_patches(x, 16000)
    ref_patches = ref_examples(x)
    assert patches.shape == ref_patches.shape == (ref.shape[0] // 96, 96, 64)
    np.testing.assert_allclose(patches, ref_patches, atol=1e-4, rtol=0)


def test_int16_scaled_and_stereo_averaged() -> None:
    rng = np.random.default_rng(2)
    left = rng.integers(-20000, 20000, 16000, dtype=np.int16)
    right = rng.integers(-20000, 20000, 16000, dtype=np.int16)
    stereo = np.stack([left, right], axis=1)
    mono = (left.astype(np.float64) / 32768.0 + right.astype(np.float64) / 32768.0) / 2
    np.testing.assert_allclose(waveform_to_log_mel(stereo, 16000), ref_log_mel_spectrogram(mono), atol=1e-4, rtol=0)
    np.testing.assert_allclose(
        waveform_to_log_mel(left, 16000), ref_log_mel_spectrogram(left / 32768.0), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("sr", [44100, 48000, 8000, 22050])
def test_resampled_tone_gives_patch_count_and_band(sr: int) -> None:
    seconds = 3.5
    x = sine(1000.0, sr, seconds)
    patches = log_mel_patches(x, sr)
    n16 = int(np.ceil(x.shape[0] * 16000 / sr))  # resample_poly's output length
    expected_frames = 1 + (n16 - 400) // 160
    assert patches.shape == (expected_frames // 96, 96, 64)
    assert patches.shape[0] == 3  # 3.5 s holds three whole 0.96 s patches
    # Skip edge frames (resampling filter transients), then the tone must peak in its mel band.
    spectrum = patches.reshape(-1, 64)[5:-5].mean(axis=0)
    assert int(np.argmax(spectrum)) == mel_band_of(1000.0)


def test_silence_is_log_offset() -> None:
    assert np.allclose(waveform_to_log_mel(np.zeros(4000), 16000), SILENCE_LOG_MEL)


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "sr", "message"),
    [
        (np.zeros(0), 16000, "empty"),
        (np.zeros(399), 16000, "too short"),
        (np.array([0.0, np.nan] * 1000), 16000, "NaN"),
        (np.zeros((2, 2, 400)), 16000, "1-D"),
        (np.zeros((2, 16000)), 16000, "channels"),
        (np.zeros(1000, dtype=np.int32), 16000, "dtype"),
        (np.full(1000, 3000.0), 16000, "int16"),
        (np.zeros(1000), 0, "sample rate"),
        (np.zeros(1000), 44100.5, "sample rate"),
    ],
)
def test_bad_audio_is_a_clear_error(x: np.ndarray, sr: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        waveform_to_log_mel(x, sr)


def test_shorter_than_one_patch_is_an_error() -> None:
    log_mel_patches(np.zeros(MIN_PATCH_SAMPLES), 16000)  # exactly one patch is fine
    with pytest.raises(ValueError, match="too short for one patch"):
        log_mel_patches(np.zeros(MIN_PATCH_SAMPLES - 1), 16000)


# ---- padding into a batch ------------------------------------------------------------------------


def test_pad_patches_keeps_most_recent_and_masks_padding() -> None:
    rng = np.random.default_rng(3)
    long = rng.normal(size=(6, 96, 64)).astype(np.float32)
    short = rng.normal(size=(2, 96, 64)).astype(np.float32)
    empty = np.zeros((0, 96, 64), dtype=np.float32)
    patches, mask = pad_patches([long, short, empty], max_patches=4)
    assert patches.shape == (3, 4, 96, 64) and patches.dtype == np.float32
    assert mask.dtype == bool
    np.testing.assert_array_equal(patches[0], long[2:])  # the last four, in time order
    np.testing.assert_array_equal(mask[0], [False] * 4)
    np.testing.assert_array_equal(patches[1, :2], short)
    np.testing.assert_array_equal(mask[1], [False, False, True, True])
    np.testing.assert_array_equal(mask[2], [True] * 4)
    assert np.all(patches[1, 2:] == np.float32(SILENCE_LOG_MEL))


@pytest.mark.parametrize(
    ("segments", "max_patches", "message"),
    [
        ([], 4, "at least one"),
        ([np.zeros((1, 96, 64))], 0, "max_patches"),
        ([np.zeros((1, 96, 64)), np.zeros((1, 64, 96))], 4, "segment 1"),
        ([np.full((1, 96, 64), np.nan)], 4, "NaN"),
    ],
)
def test_pad_patches_bad_input(segments: list, max_patches: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pad_patches(segments, max_patches)
