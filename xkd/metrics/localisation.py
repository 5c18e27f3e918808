"""Localisation against ground-truth masks (reference/xai_metrics.md §2), batched over samples.

Inputs: ``attribution`` and ``mask`` (N,1,H,W); a mask pixel counts when > 0.5. All higher is
better, all in [0, 1] for non-negative maps.

Edge cases (counted in ``extras``, never silent):
- empty mask: the score is undefined -> NaN (``extras['empty_mask']``); excluded from means.
- all-zero map (no mass: every value 0; for EPG no positive value): the map points nowhere ->
  0 (``extras['zero_map']``), as Rao et al. (ICCV 2023) record zero-energy maps as 0.
- ties in a map with signal: resolved *in expectation* under uniformly random tie-breaking (no
  random numbers drawn): the pointing game scores the fraction of maximisers that hit, rank
  metrics count tied pixels at the top-k boundary fractionally. A uniform map therefore scores
  chance level (|M|/HW for RRA and top-k intersection).

Metrics:
- pointing game (Zhang et al., ECCV 2016 / IJCV 2018; TorchRay): the maximiser hits if a mask
  pixel lies within ``tolerance`` pixels (closed disc, ``d^2 <= tolerance^2``; TorchRay's strict
  ``d < 15`` equals ``d^2 <= 224``). ``tolerance=0``: the maximiser itself must be in the mask.
- energy pointing game (Wang et al., Score-CAM, CVPR-W 2020; Rao et al. 2023):
  ``sum_M a+ / sum a+`` with ``a+ = max(a, 0)``.
- relevance mass accuracy (Arras et al., CLEVR-XAI, Inf. Fusion 2022): ``sum_M |a| / sum |a|``
  (the CLEVR-XAI code's absolute values).
- relevance rank accuracy (Arras et al. 2022): ``|top-K(a) and M| / K`` with ``K = |M|``.
- top-k intersection (Theiner et al., WACV 2022): ``|top-k(a) and M| / k``,
  ``k = max(1, round(k_fraction * HW))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from xkd.errors import UserError
from xkd.metrics._ops import check_map, topk_inclusion
from xkd.metrics.base import MetricParams, MetricResult, register_metric


def _prep(attribution: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = check_map(attribution)
    m = check_map(mask.float(), "mask")
    if m.shape != a.shape:
        raise UserError(f"mask shape {tuple(m.shape)} does not match attribution {tuple(a.shape)}")
    return a.double(), m > 0.5


def _finish(vals: torch.Tensor, mask: torch.Tensor, zero: torch.Tensor, **info: object) -> MetricResult:
    empty = mask.flatten(1).sum(1) == 0
    vals = torch.where(zero, torch.zeros_like(vals), vals)
    vals = torch.where(empty, torch.full_like(vals, float("nan")), vals)
    return MetricResult(vals.double().cpu(), extras={"empty_mask": empty.cpu(), "zero_map": zero.cpu()},
                        info=dict(info))


def disc_dilate(mask: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Pixels within Euclidean distance ``tolerance`` of a mask pixel, bool (N,1,H,W)."""
    r = int(math.floor(tolerance))
    if r <= 0:
        return mask.bool()
    off = torch.arange(-r, r + 1, dtype=torch.float64, device=mask.device)
    disc = ((off[:, None] ** 2 + off[None, :] ** 2) <= tolerance**2).double()
    disc = disc.view(1, 1, 2 * r + 1, 2 * r + 1)
    return F.conv2d(mask.double(), disc, padding=r) > 0.5


class PointingParams(MetricParams):
    tolerance: float = Field(2.0, ge=0, description="hit radius in pixels (TorchRay: 15 at 224 px)")


def pointing_game(attribution: torch.Tensor, mask: torch.Tensor, *,
                  tolerance: float = 2.0) -> MetricResult:
    """Pointing game hit (fraction of tied maximisers that hit), per sample."""
    a, m = _prep(attribution, mask)
    n = a.shape[0]
    flat = a.reshape(n, -1)
    is_max = flat == flat.max(1, keepdim=True).values
    near = disc_dilate(m, tolerance).reshape(n, -1)
    vals = (is_max & near).sum(1).double() / is_max.sum(1).double()
    return _finish(vals, m, (flat == 0).all(1), tolerance=tolerance)


class NoParams(MetricParams):
    pass


def energy_pointing_game(attribution: torch.Tensor, mask: torch.Tensor) -> MetricResult:
    """Energy pointing game: positive mass inside the mask over total positive mass."""
    a, m = _prep(attribution, mask)
    pos = a.clamp(min=0).flatten(1)
    total = pos.sum(1)
    vals = (pos * m.flatten(1)).sum(1) / total.clamp(min=1e-300)
    return _finish(vals, m, total <= 0, sign="positive part")


def relevance_mass_accuracy(attribution: torch.Tensor, mask: torch.Tensor) -> MetricResult:
    """Relevance mass accuracy: |a| mass inside the mask over total |a| mass."""
    a, m = _prep(attribution, mask)
    mag = a.abs().flatten(1)
    total = mag.sum(1)
    vals = (mag * m.flatten(1)).sum(1) / total.clamp(min=1e-300)
    return _finish(vals, m, total <= 0, sign="absolute")


def _topk_hits(a: torch.Tensor, m: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    n = a.shape[0]
    incl = topk_inclusion(a.reshape(n, -1), k)
    return (incl * m.reshape(n, -1)).sum(1)


def relevance_rank_accuracy(attribution: torch.Tensor, mask: torch.Tensor) -> MetricResult:
    """Relevance rank accuracy: fraction of the top-|M| pixels that lie in the mask."""
    a, m = _prep(attribution, mask)
    k = m.flatten(1).sum(1)
    vals = _topk_hits(a, m, k) / k.clamp(min=1).double()
    return _finish(vals, m, (a.flatten(1) == 0).all(1), ties="expectation")


class TopKParams(MetricParams):
    k_fraction: float = Field(0.05, gt=0, le=1, description="k as a fraction of H*W")


def top_k_intersection(attribution: torch.Tensor, mask: torch.Tensor, *,
                       k_fraction: float = 0.05) -> MetricResult:
    """Top-k intersection: fraction of the top-k pixels that lie in the mask."""
    a, m = _prep(attribution, mask)
    n, hw = a.shape[0], a.shape[2] * a.shape[3]
    k = max(1, int(round(k_fraction * hw)))
    vals = _topk_hits(a, m, torch.full((n,), k, dtype=torch.long, device=a.device)) / k
    return _finish(vals, m, (a.flatten(1) == 0).all(1), k=k, ties="expectation")


_common = dict(category="localisation", higher_is_better=True, needs=("attribution", "mask"))
register_metric("pointing_game", pointing_game, PointingParams,
                description="Pointing game with tolerance (Zhang et al., ECCV 2016)", **_common)
register_metric("energy_pointing_game", energy_pointing_game, NoParams,
                description="Energy pointing game (Wang et al., Score-CAM, CVPR-W 2020)", **_common)
register_metric("relevance_mass_accuracy", relevance_mass_accuracy, NoParams,
                description="Relevance mass accuracy (Arras et al., CLEVR-XAI, 2022)", **_common)
register_metric("relevance_rank_accuracy", relevance_rank_accuracy, NoParams,
                description="Relevance rank accuracy (Arras et al., CLEVR-XAI, 2022)", **_common)
register_metric("top_k_intersection", top_k_intersection, TopKParams,
                description="Top-k intersection with the mask (Theiner et al., WACV 2022)", **_common)
