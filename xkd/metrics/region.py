"""Region perturbation and AOPC, MoRF and LeRF (Samek et al., IEEE TNNLS 28(11), 2017).

reference/xai_metrics.md §1.3. The image is cut into a non-overlapping grid of ``patch_size``
patches (border patches may be smaller); patches are ranked by their *summed* relevance, stable
descending for MoRF and stable ascending for LeRF (ties in row-major patch order). ``x^(0) = x``
and ``x^(k)`` has the first k patches replaced by uniform noise, drawn once per image from the
explicit generator (so ``x^(k+1)`` extends ``x^(k)``), in ``[noise_low, noise_high]`` or, by
default, in the image's own value range ``[min x, max x]``. With the softmax probability f of the
target class,

    AOPC = 1/(L+1) * sum_{k=0..L} [ f(x^(0)) - f(x^(k)) ]        (Samek et al., eq. 12)

per sample (the reference averages it over the data set). MoRF: higher is better (fast drop).
LeRF: lower is better (slow drop). Curves f(x^(k)), k = 0..L, are returned.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xkd.errors import UserError
from xkd.metrics._forward import masked_curve, output_scores, resolve_target
from xkd.metrics._ops import check_map, stable_rank
from xkd.metrics.base import MetricResult, RandomParams, register_metric


class AOPCParams(RandomParams):
    patch_size: int = Field(4, ge=1, description="side of the square grid patches, pixels")
    regions: int | None = Field(None, ge=1, description="L, patches perturbed (default: all)")
    noise_low: float | None = Field(None, description="uniform noise lower bound (default min x)")
    noise_high: float | None = Field(None, description="uniform noise upper bound (default max x)")
    output: Literal["softmax", "logit"] = "softmax"
    max_batch: int = Field(256, ge=1)


def patch_ranks(attribution: torch.Tensor, patch_size: int, order: str) -> torch.Tensor:
    """Per-pixel rank (N,1,H,W) long of the pixel's patch in the MoRF/LeRF patch order."""
    n, _, h, w = attribution.shape
    gh, gw = math.ceil(h / patch_size), math.ceil(w / patch_size)
    padded = F.pad(attribution.double(), (0, gw * patch_size - w, 0, gh * patch_size - h))
    sums = F.avg_pool2d(padded, patch_size).reshape(n, -1) * patch_size**2
    if order not in ("morf", "lerf"):
        raise UserError(f"order '{order}' unknown; allowed: morf, lerf")
    prank = stable_rank(sums, descending=order == "morf")
    rows = torch.arange(h, device=attribution.device) // patch_size
    cols = torch.arange(w, device=attribution.device) // patch_size
    pid = (rows[:, None] * gw + cols[None, :]).reshape(1, -1).expand(n, -1)
    return prank.gather(1, pid).view(n, 1, h, w)


def aopc(
    model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
    target: torch.Tensor | None = None, *, generator: torch.Generator, order: str = "morf",
    patch_size: int = 4, regions: int | None = None, noise_low: float | None = None,
    noise_high: float | None = None, output: str = "softmax", max_batch: int = 256,
) -> MetricResult:
    """Per-sample AOPC of region perturbation in ``order`` ('morf' or 'lerf'), curves (N, L+1)."""
    a = check_map(attribution, like=x)
    n_img, _, h, w = x.shape
    n_patches = math.ceil(h / patch_size) * math.ceil(w / patch_size)
    L = n_patches if regions is None else min(regions, n_patches)
    target, logits = resolve_target(model, x, target, max_batch)
    clean = output_scores(logits, target, output).float()
    rank = patch_ranks(a, patch_size, order)
    u = torch.rand(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)
    flat = x.reshape(n_img, -1)
    lo = flat.min(1).values if noise_low is None else flat.new_full((n_img,), float(noise_low))
    hi = flat.max(1).values if noise_high is None else flat.new_full((n_img,), float(noise_high))
    noise = lo.view(-1, 1, 1, 1) + (hi - lo).view(-1, 1, 1, 1) * u
    ys = masked_curve(model, x, rank, torch.arange(1, L + 1), noise, x, target, output, max_batch)
    curve = torch.cat([clean.view(-1, 1), ys], dim=1).double().cpu()
    vals = (curve[:, :1] - curve).sum(1) / (L + 1)
    return MetricResult(vals, curve, torch.arange(L + 1, dtype=torch.float64),
                        info={"order": order, "patch_size": patch_size, "regions": L,
                              "output": output})


def aopc_morf(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
              target: torch.Tensor | None = None, **kw) -> MetricResult:
    """MoRF AOPC (most relevant first); higher is better."""
    return aopc(model, x, attribution, target, order="morf", **kw)


def aopc_lerf(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
              target: torch.Tensor | None = None, **kw) -> MetricResult:
    """LeRF AOPC (least relevant first); lower is better."""
    return aopc(model, x, attribution, target, order="lerf", **kw)


_common = dict(category="faithfulness", needs=("model", "x", "attribution"), optional=("target",))
register_metric("aopc_morf", aopc_morf, AOPCParams, higher_is_better=True,
                description="MoRF AOPC, region perturbation with uniform noise (Samek et al., "
                "IEEE TNNLS 2017)", **_common)
register_metric("aopc_lerf", aopc_lerf, AOPCParams, higher_is_better=False,
                description="LeRF AOPC, least relevant regions first (Samek et al., IEEE TNNLS "
                "2017)", **_common)
