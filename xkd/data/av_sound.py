"""Class sounds of ``av_shapes``: one pitch/rhythm pattern per class, synthesised in numpy and
rendered to a log-mel spectrogram with :func:`xkd.data.audio.log_mel_spectrogram`.

Sound class k is simply the k-th pattern below; it has nothing to do with what shape k looks
like (CCL, Chen et al. CVPR 2021, transfers across modalities that are not semantically aligned).
Per clip: random onset shift and time stretch, pitch factor, loudness, second-harmonic strength,
white noise, random distractor notes, and (with probability ``unrelated``) the pattern of a random
class instead of the label's (a soundtrack unrelated to the picture).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xkd.data.audio import frames_to_samples, log_mel_spectrogram

SAMPLE_RATE = 8000
N_FFT = 256
HOP = 64

PATTERNS: tuple[tuple[tuple[float, float, float, float], ...], ...] = (
    ((0.10, 0.85, 320.0, 320.0),),                                   # one long low tone
    ((0.08, 0.30, 2000.0, 2000.0), (0.52, 0.74, 2000.0, 2000.0)),    # two high beeps
    ((0.10, 0.85, 450.0, 2600.0),),                                  # rising chirp
    ((0.10, 0.85, 2600.0, 450.0),),                                  # falling chirp
    ((0.05, 0.20, 900.0, 900.0), (0.38, 0.53, 900.0, 900.0), (0.71, 0.86, 900.0, 900.0)),  # three beeps
    ((0.05, 0.24, 600.0, 600.0), (0.24, 0.43, 1400.0, 1400.0),
     (0.43, 0.62, 600.0, 600.0), (0.62, 0.81, 1400.0, 1400.0)),      # trill
)
"""Notes (start, end as a fraction of the clip; start and end frequency in Hz) of each class."""
PATTERN_NAMES = ("low_tone", "two_beeps", "rising", "falling", "three_beeps", "trill")
MAX_NOTES = max(len(p) for p in PATTERNS)


def _note_table(num_classes: int) -> np.ndarray:
    """(K, MAX_NOTES, 4) notes, unused slots have start = end = 2 (never sound)."""
    table = np.full((num_classes, MAX_NOTES, 4), 2.0, dtype=np.float64)
    for k in range(num_classes):
        for j, note in enumerate(PATTERNS[k]):
            table[k, j] = note
    return table


def _notes_wave(t: np.ndarray, start: np.ndarray, end: np.ndarray, f0: np.ndarray, f1: np.ndarray,
                harmonic: np.ndarray) -> np.ndarray:
    """(N,L) sum of notes given (N,J) start/end times (s), start/end frequencies (Hz), with a
    linear frequency sweep, 4 ms fade in/out and a second harmonic of relative amplitude ``harmonic``
    (left out for notes whose harmonic would pass 0.45 x the sample rate and alias)."""
    f32 = np.float32
    t, start, end, f0, f1, harmonic = (np.asarray(a, dtype=f32) for a in (t, start, end, f0, f1, harmonic))
    tt = t[None, None, :]
    s, e = start[..., None], end[..., None]
    dur = np.maximum(e - s, 1e-6)
    u = (tt - s) / dur  # 0..1 inside the note
    # phase of a linear sweep f(u) = f0 + (f1 - f0) u: 2 pi (f0 tau + (f1 - f0) tau^2 / (2 dur))
    tau = tt - s
    phase = f32(2 * math.pi) * (f0[..., None] * tau + (f1 - f0)[..., None] * tau * tau / (2 * dur))
    fade = np.clip(np.minimum(tau, e - tt) / f32(0.004), 0, 1)
    on = (u >= 0) & (u < 1)
    below_nyquist = 2 * np.maximum(f0, f1)[..., None] < 0.45 * SAMPLE_RATE  # no aliased harmonics
    h = harmonic[:, None, None] * below_nyquist
    sin = np.sin(phase)
    wave = np.where(on, fade * sin * (1 + 2 * h * np.cos(phase)), f32(0))  # sin 2p = 2 sin p cos p
    return wave.sum(1)


def synthesise(labels: np.ndarray, rng: np.random.Generator, num_classes: int, n_frames: int,
               noise: float, distractors: float, unrelated: float) -> np.ndarray:
    """(N, L) float32 waves of the class sounds of ``labels`` (every random choice from ``rng``)."""
    n = len(labels)
    length = frames_to_samples(n_frames, HOP)
    dur_s = length / SAMPLE_RATE
    t = np.arange(length, dtype=np.float64) / SAMPLE_RATE
    swap = rng.random(n) < unrelated
    pattern = np.where(swap, rng.integers(0, num_classes, n), labels)
    notes = _note_table(num_classes)[pattern]  # (N, J, 4)
    shift = rng.uniform(-0.08, 0.12, n)[:, None]
    stretch = rng.uniform(0.8, 1.15, n)[:, None]
    pitch = 2.0 ** rng.uniform(-0.25, 0.25, n)[:, None]
    start = (shift + stretch * notes[..., 0]) * dur_s
    end = (shift + stretch * notes[..., 1]) * dur_s
    harmonic = rng.uniform(0.0, 0.6, n)
    wave = _notes_wave(t, start, end, pitch * notes[..., 2], pitch * notes[..., 3], harmonic)
    wave *= rng.uniform(0.5, 1.0, n)[:, None]
    # distractor notes: up to 3 short random tones, each present with probability distractors / 3
    k = 3
    present = rng.random((n, k)) < distractors / k
    d_start = rng.uniform(0, 0.9, (n, k)) * dur_s
    d_end = d_start + rng.uniform(0.08, 0.25, (n, k)) * dur_s
    d_start = np.where(present, d_start, 10.0)
    d_freq = 2.0 ** rng.uniform(math.log2(250), math.log2(3200), (n, k))
    wave += rng.uniform(0.3, 0.8, n)[:, None] * _notes_wave(t, d_start, d_end, d_freq, d_freq, np.zeros(n))
    wave += noise * rng.standard_normal((n, length))
    return wave.astype(np.float32)


def spectrograms(waves: np.ndarray, n_mels: int) -> torch.Tensor:
    """(N, 1, n_mels, n_frames) log-mel spectrograms, each standardised to mean 0, std 1."""
    spec = log_mel_spectrogram(torch.from_numpy(waves), SAMPLE_RATE, N_FFT, HOP, n_mels)
    mu = spec.mean((1, 2), keepdim=True)
    sd = spec.std((1, 2), keepdim=True).clamp_min(1e-6)
    return ((spec - mu) / sd)[:, None].float()
