"""Synthetic NICU audio: infant cry phonations over incubator/ventilator noise and monitor alarms.

Why this shape: neonatal cry is a harmonic sound with a fundamental of about 350-600 Hz produced in
expiratory bursts; whimpering is short, quiet and low, vigorous crying long, loud and high. Rendering
the cry item that way (and never any cry for intubated infants, whose cry is silent) gives the audio
branch real but partial information. Alarm beeps and ventilator hiss are the confounders it meets
on a ward. Recordings use several sample rates so the model front end's resampling is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import butter, lfilter

from models.data.synth_ratings import PainScenario

CryBurst = tuple[float, float, int]  # (start_s, end_s, level 1 whimper / 2 vigorous) on the recording clock


@dataclass(frozen=True)
class AudioOptions:
    rates: tuple[int, ...] = (16000, 22050)  # one is drawn per recording
    stereo_probability: float = 0.3
    alarms_per_min: float = 0.5
    noise_level: float = 0.015


def make_cry_bursts(rng: np.random.Generator, scenario: PainScenario) -> list[CryBurst]:
    """Phonation bursts for every window whose cry item is 1 (whimper) or 2 (vigorous).

    The same schedule drives the mouth in the video, so the face and the sound agree in time; for
    intubated infants it still drives the (silent) mouth movement.
    """
    bursts: list[CryBurst] = []
    cry_col = 1
    for w in range(scenario.n_windows):
        level = int(scenario.items[w, cry_col])
        if level == 0:
            continue
        t = float(scenario.window_starts[w]) + rng.uniform(0.0, 0.8)
        end = float(scenario.window_starts[w]) + scenario.window_s
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


def render_audio(path: Path, rng: np.random.Generator, *, bursts: list[CryBurst], intubated: bool,
                 start_s: float, duration_s: float, options: AudioOptions) -> tuple[int, int]:
    """Write audio.wav covering recording time [start_s, start_s + duration_s); return (rate, channels)."""
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
    channels = 2 if rng.random() < options.stereo_probability else 1
    if channels == 2:  # second microphone: slightly attenuated with its own noise
        sig = np.stack([sig, 0.8 * sig + rng.normal(0, options.noise_level * 0.3, n)], axis=1)
    pcm = (np.clip(sig, -1.0, 1.0) * 32767).astype(np.int16)
    wavfile.write(path, rate, pcm)
    return rate, channels
