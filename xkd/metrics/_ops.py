"""Shared batched tensor operations of the metrics: checks, rankings, ties, AUC, blur.

Model forwards (chunking, shared forwards) live in :mod:`xkd.metrics._forward`.

Conventions (reference/xai_metrics.md section 0.3):
- orderings are stable sorts, so tied values keep index (row-major pixel) order;
- rank statistics use average ranks for ties (the ``scipy.stats.rankdata`` default);
- "ties in expectation": a top-k set over tied values is scored as the expectation under
  uniformly random tie-breaking (exact for tie-free maps, no random numbers drawn).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from xkd.errors import UserError


def check_map(a: torch.Tensor, name: str = "attribution",
              like: torch.Tensor | None = None) -> torch.Tensor:
    """Validate a (N,1,H,W) or (N,H,W) map: finite; spatial size of ``like`` (N,C,H,W) if given."""
    if a.dim() == 3:
        a = a.unsqueeze(1)
    if a.dim() != 4 or a.shape[1] != 1:
        raise UserError(f"{name} must have shape (N,1,H,W); got {tuple(a.shape)}")
    if like is not None and (a.shape[0] != like.shape[0] or a.shape[2:] != like.shape[2:]):
        raise UserError(f"{name} shape {tuple(a.shape)} does not match input {tuple(like.shape)}")
    if not torch.isfinite(a).all():
        raise UserError(f"{name} contains NaN or inf values")
    return a.detach()


def stable_rank(values: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """Position of each entry of ``values`` (N, n) in its stable (descending) order, long (N, n).

    Ties keep index order: the lower index comes first in both directions.
    """
    order = torch.argsort(values, dim=1, descending=descending, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(values.shape[1], device=values.device).expand_as(order))
    return rank


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks (N, n) float64 of each row, ties given their average rank (batched)."""
    s, order = torch.sort(values, dim=1, stable=True)
    n = s.shape[1]
    idx = torch.arange(n, device=s.device).expand_as(s)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    last = torch.ones_like(s, dtype=torch.bool)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, idx, torch.zeros_like(idx)).cummax(dim=1).values
    end = torch.where(last, idx, torch.full_like(idx, n)).flip(1).cummin(dim=1).values.flip(1)
    avg = (start + end).double() / 2.0 + 1.0
    return torch.empty_like(avg).scatter_(1, order, avg)


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of matching rows (N, n) in float64; NaN where a row is constant."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    den = torch.sqrt((a * a).sum(1) * (b * b).sum(1))
    r = (a * b).sum(1) / den
    return torch.where(den > 0, r.clamp(-1.0, 1.0), torch.full_like(r, float("nan")))


def topk_inclusion(values: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """P(entry is in the top-k of its row) under uniformly random tie-breaking, float64 (N, n).

    ``k`` (N,) long in [0, n]. Entries above the k-th largest value get 1, entries tied with it
    share the remaining slots equally, the rest get 0. Tie-free rows give an exact 0/1 top-k set.
    """
    n = values.shape[1]
    k = k.to(values.device).long().clamp(0, n)
    s = torch.sort(values, dim=1, descending=True).values
    thr = s.gather(1, (k - 1).clamp(min=0)[:, None])
    above = values > thr
    tie = values == thr
    slots = (k - above.sum(1)).double()
    share = slots / tie.sum(1).clamp(min=1).double()
    p = above.double() + tie.double() * share[:, None]
    return torch.where(k[:, None] > 0, p, torch.zeros_like(p))


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """Normalised trapezoid AUC of (N, T+1) curves on x = t/T in [0, 1] (RISE, eq. in §0.3(8))."""
    t = curves.shape[1] - 1
    if t < 1:
        raise UserError("a curve needs at least two points for an AUC")
    c = curves.double()
    return (c.sum(1) - 0.5 * (c[:, 0] + c[:, -1])) / t


def gaussian_kernel(size: int, sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised (size, size) Gaussian kernel exp(-d^2 / 2 sigma^2) centred on the middle pixel."""
    r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(r**2) / (2.0 * sigma**2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).to(dtype)


def gaussian_blur(x: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Depthwise Gaussian blur with zero padding ``size // 2`` (RISE insertion substrate)."""
    c = x.shape[1]
    k = gaussian_kernel(size, sigma, x.dtype, x.device).expand(c, 1, size, size)
    return F.conv2d(x, k, padding=size // 2, groups=c)


def substrate(x: torch.Tensor, kind: str | float, blur_size: int, blur_sigma: float) -> torch.Tensor:
    """Replacement values: ``'zero'``, ``'mean'`` (per-sample, per-channel mean of the clean image),
    ``'blur'`` (Gaussian blur of the clean image) or a constant float."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if kind == "blur":
        return gaussian_blur(x, blur_size, blur_sigma)
    if isinstance(kind, (int, float)):
        return torch.full_like(x, float(kind))
    raise UserError(f"baseline '{kind}' unknown; allowed: zero, mean, blur, or a number")


def steps_schedule(n_pixels: int, steps: int) -> tuple[int, torch.Tensor]:
    """RISE schedule: ``s = ceil(n/steps)`` pixels per step, ``T = ceil(n/s)`` steps and the
    pixel counts ``min(t*s, n)`` for t = 0..T (long, T+1)."""
    if steps < 1:
        raise UserError(f"steps must be >= 1; got {steps}")
    s = math.ceil(n_pixels / steps)
    t = math.ceil(n_pixels / s)
    return t, (torch.arange(t + 1) * s).clamp(max=n_pixels)
