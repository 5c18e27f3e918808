"""Log-mel spectrogram: HTK filterbank against hand-worked values, pure tones peak at the right bin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xkd.data.audio import frames_to_samples, log_mel_spectrogram, mel_filterbank, tone


def test_filterbank_one_filter_by_hand() -> None:
    # f_max = 2100 Hz: mel(2100) = 2595 log10(4); the single centre is at half that mel value,
    # i.e. 1 + f/700 = sqrt(4) = 2 -> 700 Hz. Bins at 0, 350, ..., 2100 Hz (sample rate 4200).
    fb = mel_filterbank(7, 1, 4200)
    expected = [0.0, 0.5, 1.0, 1050 / 1400, 700 / 1400, 350 / 1400, 0.0]
    assert fb.shape == (7, 1)
    np.testing.assert_allclose(fb[:, 0].numpy(), expected, atol=1e-6)


def test_filterbank_two_filters_by_hand() -> None:
    # f_max = 4900 Hz: 1 + f/700 = 8^(j/3) = 2^j -> corners 0, 700, 2100, 4900 Hz; bins every 700 Hz.
    fb = mel_filterbank(8, 2, 9800)
    f0 = [0, 1, 700 / 1400, 0, 0, 0, 0, 0]
    f1 = [0, 0, 700 / 1400, 1, 2100 / 2800, 1400 / 2800, 700 / 2800, 0]
    np.testing.assert_allclose(fb.numpy(), np.array([f0, f1]).T, atol=1e-6)


def test_filterbank_rejects_bad_range() -> None:
    with pytest.raises(ValueError, match="f_min < f_max"):
        mel_filterbank(9, 4, 8000, f_min=5000.0)


def _centres(n_mels: int, f_max: float) -> np.ndarray:
    """Filter centres from the mel formula, written out independently of the module."""
    top = 2595 * math.log10(1 + f_max / 700)
    mels = np.linspace(0, top, n_mels + 2)[1:-1]
    return 700 * (10 ** (mels / 2595) - 1)


@pytest.mark.parametrize("freq", [180.0, 440.0, 1000.0, 2300.0, 3500.0])
def test_pure_tone_peaks_at_nearest_centre(freq: float) -> None:
    sr, n_fft, hop, n_mels = 8000, 256, 64, 32
    wave = tone(freq, frames_to_samples(32, hop), sr)
    spec = log_mel_spectrogram(wave, sr, n_fft, hop, n_mels)
    assert spec.shape == (n_mels, 32)
    centres = _centres(n_mels, sr / 2)
    expected = int(np.argmin(np.abs(centres - freq)))
    peak = spec.mean(1).argmax().item()
    assert peak == expected, (freq, peak, expected, centres[[expected, peak]])


def test_batch_equals_single_and_silence_is_floor() -> None:
    sr, n_fft, hop = 8000, 128, 32
    n = frames_to_samples(16, hop)
    waves = torch.stack([tone(500.0, n, sr), tone(1500.0, n, sr), torch.zeros(n)])
    batch = log_mel_spectrogram(waves, sr, n_fft, hop, 16)
    for i in range(3):
        torch.testing.assert_close(batch[i], log_mel_spectrogram(waves[i], sr, n_fft, hop, 16))
    assert torch.allclose(batch[2], torch.full_like(batch[2], -100.0))
    # a louder tone (x10 amplitude) is 20 dB higher in every bin that holds its energy
    loud = log_mel_spectrogram(10 * waves[0], sr, n_fft, hop, 16)
    k = batch[0].mean(1).argmax()
    torch.testing.assert_close(loud[k] - batch[0][k], torch.full_like(loud[k], 20.0), atol=1e-3, rtol=0)
