"""Turn raw Captum attributions into non-negative one-channel maps (rules in ``params.py``)."""

from __future__ import annotations

import torch


def apply_sign(a: torch.Tensor, sign: str) -> torch.Tensor:
    """``abs`` |a|, ``positive`` max(a,0), ``negative`` max(-a,0), ``all`` a (signed, unchanged)."""
    if sign == "abs":
        return a.abs()
    if sign == "positive":
        return a.clamp_min(0)
    if sign == "negative":
        return (-a).clamp_min(0)
    if sign == "all":
        return a
    raise ValueError(f"unknown sign rule {sign!r}")


def pool_channels(a: torch.Tensor, how: str) -> torch.Tensor:
    """(B,C,H,W) -> (B,1,H,W) by ``sum``, ``mean``, ``max`` or ``l2`` over channels."""
    if how == "sum":
        return a.sum(1, keepdim=True)
    if how == "mean":
        return a.mean(1, keepdim=True)
    if how == "max":
        return a.amax(1, keepdim=True)
    if how == "l2":
        return a.pow(2).sum(1, keepdim=True).sqrt()
    raise ValueError(f"unknown channel pooling {how!r}")


def normalize(m: torch.Tensor, how: str) -> torch.Tensor:
    """Per-sample normalisation of non-negative maps (B,1,H,W); constant maps stay finite."""
    if how == "none":
        return m
    flat = m.flatten(1)
    if how == "max":
        den = flat.amax(1)
        out = flat / torch.where(den > 0, den, torch.ones_like(den)).unsqueeze(1)
    elif how == "sum":
        den = flat.sum(1)
        out = flat / torch.where(den > 0, den, torch.ones_like(den)).unsqueeze(1)
    elif how == "minmax":
        lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
        rng = hi - lo
        out = (flat - lo) / torch.where(rng > 0, rng, torch.ones_like(rng))
    else:
        raise ValueError(f"unknown normalisation {how!r}")
    return out.view_as(m)


def to_map(a: torch.Tensor, sign: str, channel_pool: str, norm: str) -> torch.Tensor:
    """Sign rule, channel pooling, non-negativity (|.| after ``all``), per-sample normalisation."""
    m = pool_channels(apply_sign(a, sign), channel_pool)
    if sign == "all":
        m = m.abs()
    return normalize(m.clamp_min(0), norm)
