"""Log-mel spectrograms in plain torch (for the ``av_shapes`` audio modality, DESIGN section 4).

Mel scale: HTK (O'Shaughnessy 1987), ``mel(f) = 2595 * log10(1 + f / 700)``. The filterbank has
``n_mels`` triangular filters whose corner frequencies are ``n_mels + 2`` points equally spaced on
the mel scale between ``f_min`` and ``f_max``; filter ``m`` rises linearly (in Hz) from point ``m``
to 1 at point ``m + 1`` and falls to 0 at point ``m + 2``. Triangles have peak 1 (no area / Slaney
normalisation). The spectrogram is ``10 * log10(|STFT|^2 @ filterbank + eps)`` (dB) with a
periodic Hann window, ``torch.stft(center=True, pad_mode="reflect")``.
"""

from __future__ import annotations

import math

import torch

DB_FLOOR = 1e-10
"""Added to the mel power before the log (so silence gives -100 dB, not -inf)."""


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor | float) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`: 700 * (10^(m / 2595) - 1)."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_points(n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """The ``n_mels + 2`` corner frequencies (Hz, float64) equally spaced in mel; the filter
    centres are ``mel_points(...)[1:-1]``."""
    return mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                    dtype=torch.float64))


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """(n_freqs, n_mels) float32 HTK-mel triangular filterbank (peak 1) over the ``n_freqs`` STFT
    bins ``linspace(0, sample_rate / 2, n_freqs)`` (``n_freqs = n_fft // 2 + 1``)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1 or not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel_filterbank: need n_freqs >= 2, n_mels >= 1 and 0 <= f_min < f_max <= "
                         f"sample_rate / 2 (got {n_freqs}, {n_mels}, {f_min}, {f_max}, {sample_rate})")
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)[:, None]
    pts = mel_points(n_mels, f_min, f_max)
    lo, mid, hi = pts[:-2][None], pts[1:-1][None], pts[2:][None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return torch.minimum(rising, falling).clamp_min(0).float()


def log_mel_spectrogram(wave: torch.Tensor, sample_rate: int, n_fft: int, hop_length: int,
                        n_mels: int) -> torch.Tensor:
    """(n_mels, n_frames) dB log-mel spectrogram of a 1-D ``wave`` (or (B, n_mels, n_frames) for a
    (B, L) batch); ``n_frames = 1 + L // hop_length`` (centred frames), f_max = Nyquist."""
    window = torch.hann_window(n_fft, dtype=wave.dtype, device=wave.device)
    spec = torch.stft(wave, n_fft, hop_length=hop_length, win_length=n_fft, window=window,
                      center=True, pad_mode="reflect", return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (..., n_freqs, n_frames)
    fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate).to(power)
    mel = torch.matmul(fb.transpose(0, 1), power)  # (..., n_mels, n_frames)
    return 10.0 * torch.log10(mel + DB_FLOOR)


def frames_to_samples(n_frames: int, hop_length: int) -> int:
    """Wave length giving exactly ``n_frames`` centred STFT frames: ``hop * (n_frames - 1)``."""
    return hop_length * (n_frames - 1)


def tone(freq: float, n: int, sample_rate: int, phase: float = 0.0) -> torch.Tensor:
    """A unit-amplitude sine of ``freq`` Hz, ``n`` samples (float32)."""
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    return torch.sin(2 * math.pi * freq * t + phase).float()
