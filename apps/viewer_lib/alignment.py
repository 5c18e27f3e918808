"""Cheap per-sample numbers the viewer computes itself from the exported maps (numpy only).

When ``RUN/metrics/`` has no per-sample alignment values yet (``python -m xkd.report`` not run),
the explorer still needs something to sort by, so it computes, vectorised over samples:

- cosine similarity of the flattened teacher and student maps, <a, b> / (|a| |b|);
- Spearman's rank correlation, the Pearson correlation of the average ranks (ties share the
  mean rank, as in ``scipy.stats.spearmanr``);
- energy-in-mask, sum(M * mask) / sum(M) (the energy pointing game of Score-CAM, Wang et al.
  2020, section 4.3), when there is a ground-truth mask.

It also reproduces, for the stage view, what the saliency-weighted review loss saw at a level of
size h x w (DESIGN 3.5): M_j = area-resize(M, h x w) (adaptive average pooling when shrinking) and
W_j = (1 - a) + a * M_j / mean(M_j), uniform where the map is all zero.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

EPS = 1e-12


def _flat(m: np.ndarray) -> np.ndarray:
    return np.asarray(m, dtype=np.float64).reshape(m.shape[0], -1)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two (N, ...) map stacks; NaN where a map is all zero."""
    x, y = _flat(a), _flat(b)
    den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > EPS, (x * y).sum(axis=1) / np.maximum(den, EPS), np.nan)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > EPS, (x * y).sum(axis=1) / np.maximum(den, EPS), np.nan)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample Spearman correlation (average ranks); NaN where a map is constant."""
    return _pearson(rankdata(_flat(a), axis=1), rankdata(_flat(b), axis=1))


def energy_in_mask(m: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-sample share of the (non-negative part of the) map inside the mask; NaN for a zero map."""
    x = np.clip(_flat(m), 0, None)
    k = _flat(mask) > 0
    tot = x.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > EPS, (x * k).sum(axis=1) / np.maximum(tot, EPS), np.nan)


def _bins(n_in: int, n_out: int) -> list[tuple[int, int]]:
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


def adaptive_avg_pool(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Adaptive average pooling of (..., H, W) to (..., h, w): bin i covers
    [floor(i H / h), ceil((i + 1) H / h)), the same bins as ``torch.nn.AdaptiveAvgPool2d``."""
    x = np.asarray(m, dtype=np.float64)
    h_in, w_in = x.shape[-2:]
    h, w = size
    if h_in % h == 0 and w_in % w == 0:
        sh = x.shape[:-2] + (h, h_in // h, w, w_in // w)
        return x.reshape(sh).mean(axis=(-3, -1))
    rows = np.stack([x[..., a:b, :].mean(axis=-2) for a, b in _bins(h_in, h)], axis=-2)
    return np.stack([rows[..., a:b].mean(axis=-1) for a, b in _bins(w_in, w)], axis=-1)


def _bilinear(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear enlargement with half-pixel centres (align_corners=False)."""
    x = np.asarray(m, dtype=np.float64)
    h_in, w_in = x.shape[-2:]

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(c).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, c - lo

    r0, r1, fr = coords(size[0], h_in)
    c0, c1, fc = coords(size[1], w_in)
    top = x[..., r0, :] * (1 - fr)[:, None] + x[..., r1, :] * fr[:, None]
    return top[..., c0] * (1 - fc) + top[..., c1] * fc


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-downsample (adaptive average pooling) or bilinearly enlarge (..., H, W) to ``size``."""
    h, w = np.shape(m)[-2:]
    if (h, w) == tuple(size):
        return np.asarray(m, dtype=np.float64)
    if size[0] <= h and size[1] <= w:
        return adaptive_avg_pool(m, size)
    return _bilinear(m, size)


def level_weights(m: np.ndarray, size: tuple[int, int], mix: float, uniform: bool = False) -> np.ndarray:
    """W_j = (1 - mix) + mix * M_j / mean(M_j) for one (..., H, W) map; 1 where gated or all zero."""
    mj = resize_map(np.clip(np.asarray(m, dtype=np.float64), 0, None), size)
    mean = float(mj.mean())
    w_hat = np.ones_like(mj) if uniform or mean < EPS or not np.isfinite(mean) else mj / mean
    return (1.0 - mix) + mix * w_hat
