"""Synthetic NICU audio: infant cry phonations over incubator/ventilator noise and monitor alarms.

Why this shape: neonatal cry is a harmonic sound with a fundamental of about 350-600 Hz produced in
expiratory bursts; whimpering is short, quiet and low, vigorous crying long, loud and high. Rendering
the cry item that way (and never any cry for intubated infants, whose cry is silent) gives the audio
branch real but partial information. Alarm beeps and ventilator hiss are the confounders it meets
on a ward, with another infant's cry in an open bay (``synth_confounders``): heard through the incubator wall
(low-passed, quieter) and never seen on this infant's face. Recordings use several sample rates so the model
front end's resampling is exercised; the microphone's signal-to-noise ratio is an option (a second hospital's
microphone sits farther from the infant, or its incubators are louder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.io import wavfile
from scipy.signal import butter, lfilter

from models.data.synth_confounders import NeighbourBurst, cry_episode_starts, grimace_onset
from models.data.synth_ratings import ITEM_NAMES, PainScenario

CryBurst = tuple[float, float, int]  # (start_s, end_s, level 1 whimper / 2 vigorous) on the recording clock
# The nominal RMS of a vigorous cry burst at the microphone (measured: 0.12-0.24, mean 0.18): the reference of
# ``mic_snr_db``. Whimpers are about 12 dB quieter.
CRY_REFERENCE_RMS = 0.15
# Another infant's cry reaches this microphone through incubator walls, which pass low frequencies best:
# low-passed at this frequency (Hz), or at 0.45 x the sample rate when that is lower.
NEIGHBOUR_LOWPASS_HZ = 2500.0
# Cry latency after the grimace, s (with physiological lag on): the first burst of a cry episode.
CRY_LATENCY_S = (1.0, 3.0)


@dataclass(frozen=True)
class AudioOptions:
    rates: tuple[int, ...] = (16000, 22050)  # one is drawn per recording
    stereo_probability: float = 0.3
    alarms_per_min: float = 0.5
    mic_snr_db: float = 20.0  # a vigorous cry (CRY_REFERENCE_RMS) over the incubator hiss, dB

    def __post_init__(self) -> None:
        if not -10.0 <= self.mic_snr_db <= 60.0:  # NaN fails too
            raise ValueError(f"AudioOptions.mic_snr_db (--mic-snr-db) must be between -10 and 60 dB, "
                             f"got {self.mic_snr_db!r}")
        if not self.rates or min(self.rates) < 8000:
            raise ValueError(f"AudioOptions.rates (--audio-rates) needs rates >= 8000 Hz, got {self.rates!r}")

    @property
    def noise_level(self) -> float:
        """RMS of the incubator hiss that gives ``mic_snr_db``."""
        return CRY_REFERENCE_RMS * 10.0 ** (-self.mic_snr_db / 20.0)


def make_cry_bursts(rng: np.random.Generator, scenario: PainScenario, *, latency: bool = False) -> list[CryBurst]:
    """Phonation bursts for every window whose cry item is 1 (whimper) or 2 (vigorous).

    The same schedule drives the mouth in the video, so the face and the sound agree in time; for
    intubated infants it still drives the (silent) mouth movement. The first window of a cry episode starts
    crying when the face starts to grimace, or with ``latency`` ``CRY_LATENCY_S`` after it (and no later than
    1.5 s before the window ends, so the cry the raters scored is in it).
    """
    bursts: list[CryBurst] = []
    cry_col = ITEM_NAMES.index("cry")
    first = cry_episode_starts(scenario)
    for w in range(scenario.n_windows):
        level = int(scenario.items[w, cry_col])
        if level == 0:
            continue
        t = float(scenario.window_starts[w]) + rng.uniform(0.0, 0.8)
        end = float(scenario.window_starts[w]) + scenario.window_s
        delay = rng.uniform(*CRY_LATENCY_S) if latency else 0.0 * rng.uniform()  # same draws either way
        if first[w]:  # a cry episode starts with (or, with latency, after) the grimace, never before
            t = min(max(t, grimace_onset(scenario, w) + delay), end - 1.5)
        while t < end:
            if level >= 2:
                length, gap = rng.uniform(0.6, 1.5), rng.uniform(0.2, 0.5)
            else:
                length, gap = rng.uniform(0.2, 0.6), rng.uniform(0.8, 2.5)
            bursts.append((t, min(t + length, end), level))
            t += length + gap
    return bursts


def _envelope(n: int, rate: int, ramp_s: float = 0.03) -> np.ndarray:
    ramp = max(1, min(n // 2, int(ramp_s * rate)))
    env = np.ones(n)
    r = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    env[:ramp] = r
    env[n - ramp:] = r[::-1]
    return env


def synth_phonation(rng: np.random.Generator, n: int, rate: int, level: int) -> np.ndarray:
    """One cry burst: harmonic source on a rise-fall f0 contour with jitter, plus breath noise."""
    x = np.linspace(0.0, 1.0, n)
    if level >= 2:
        f0, harmonics, amp = rng.uniform(450, 600), 10, rng.uniform(0.25, 0.45)
    else:
        f0, harmonics, amp = rng.uniform(350, 450), 5, rng.uniform(0.05, 0.12)
    jitter = lfilter([1.0], [1.0, -0.995], rng.normal(0, 0.002, n))
    contour = f0 * (1.0 + 0.12 * np.sin(np.pi * x) + jitter)
    phase = 2 * np.pi * np.cumsum(contour) / rate
    sig = np.zeros(n)
    for h in range(1, harmonics + 1):
        if h * f0 * 1.2 >= rate / 2:
            break
        sig += h ** -1.2 * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
    sig = sig / np.max(np.abs(sig)) + 0.08 * rng.normal(0, 1, n)
    return amp * sig * _envelope(n, rate)


def synth_background(rng: np.random.Generator, n: int, rate: int, *, intubated: bool,
                     alarms_per_min: float, noise_level: float) -> np.ndarray:
    """Incubator hiss (low-passed noise), ventilator breath cycles for intubated infants, alarm beeps."""
    b, a = butter(2, min(2000.0 / (rate / 2), 0.99))
    noise = lfilter(b, a, rng.normal(0, 1, n))
    noise *= noise_level / (np.std(noise) + 1e-12)
    t = np.arange(n) / rate
    if intubated:
        breaths_per_s = rng.uniform(40, 60) / 60.0
        noise *= 1.0 + 1.5 * np.clip(np.sin(2 * np.pi * breaths_per_s * t), 0, None)
    n_alarms = rng.poisson(alarms_per_min * n / rate / 60.0)
    for _ in range(n_alarms):
        freq = float(rng.choice([960.0, 1200.0, 2400.0]))
        start = int(rng.uniform(0, max(n - rate, 1)))
        amp = rng.uniform(0.05, 0.15)
        for k in range(3):
            a0 = start + int(k * 0.25 * rate)
            m = min(int(0.15 * rate), n - a0)
            if m <= 0:
                break
            noise[a0:a0 + m] += amp * np.sin(2 * np.pi * freq * np.arange(m) / rate) * _envelope(m, rate, 0.01)
    return noise


def render_neighbour(rng: np.random.Generator, n: int, rate: int, start_s: float,
                     bursts: Sequence[NeighbourBurst]) -> np.ndarray:
    """Another infant's cry bursts: vigorous phonations at their level (dB re this infant's vigorous cry),
    low-passed as the incubator walls between the two infants do."""
    out = np.zeros(n)
    for burst in bursts:
        i0, i1 = max(int(round((burst.start_s - start_s) * rate)), 0), min(int(round((burst.end_s - start_s) * rate)), n)
        if i1 - i0 > 16:
            out[i0:i1] += 10.0 ** (burst.level_db / 20.0) * synth_phonation(rng, i1 - i0, rate, 2)
    if bursts:
        b, a = butter(2, min(NEIGHBOUR_LOWPASS_HZ, 0.45 * rate) / (rate / 2))
        out = lfilter(b, a, out)
    return out


def render_audio(path: Path, rng: np.random.Generator, *, bursts: list[CryBurst], intubated: bool,
                 start_s: float, duration_s: float, options: AudioOptions,
                 neighbour: Sequence[NeighbourBurst] = (), neighbour_rng: np.random.Generator | None = None
                 ) -> tuple[int, int]:
    """Write audio.wav covering recording time [start_s, start_s + duration_s); return (rate, channels).

    ``neighbour``: another infant's cry bursts, rendered from ``neighbour_rng`` (its own stream, so that
    switching them leaves the rest of the file as it was).
    """
    rate = int(options.rates[int(rng.integers(len(options.rates)))])
    n = int(round(duration_s * rate))
    sig = synth_background(rng, n, rate, intubated=intubated, alarms_per_min=options.alarms_per_min,
                           noise_level=options.noise_level)
    if not intubated:  # intubated infants cry silently: the tube passes between the vocal cords
        for a, b, level in bursts:
            i0, i1 = int(round((a - start_s) * rate)), int(round((b - start_s) * rate))
            i0, i1 = max(i0, 0), min(i1, n)
            if i1 - i0 > 16:
                sig[i0:i1] += synth_phonation(rng, i1 - i0, rate, level)
    if neighbour:
        if neighbour_rng is None:
            raise ValueError("render_audio: neighbour bursts need their own neighbour_rng")
        sig += render_neighbour(neighbour_rng, n, rate, start_s, neighbour)
    channels = 2 if rng.random() < options.stereo_probability else 1
    if channels == 2:  # second microphone: slightly attenuated with its own noise
        sig = np.stack([sig, 0.8 * sig + rng.normal(0, options.noise_level * 0.3, n)], axis=1)
    pcm = (np.clip(sig, -1.0, 1.0) * 32767).astype(np.int16)
    wavfile.write(path, rate, pcm)
    return rate, channels
