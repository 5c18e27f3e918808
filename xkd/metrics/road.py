"""ROAD: RemOve And Debias with noisy linear imputation (Rong et al., ICML 2022, arXiv:2202.00449).

reference/xai_metrics.md §1.4. The map is min-max normalised per sample (+1e-5 in the
denominator) and a fixed ``tie_noise * N(0,1)`` tie-breaker is added (drawn once from the
generator; 0 gives the stable row-major tie order). For each fraction p, MoRF removes the top
``floor(HW p)`` pixels, LeRF removes all but them. Removed pixels are imputed jointly: each one is
the weighted mean of its 8 neighbours (weight 1/6 edge, 1/12 diagonal, renormalised over the
neighbours inside the image), i.e. for removed i

    W_i v_i - sum_{j removed} w_ij v_j = sum_{j kept} w_ij x_j,     W_i = sum_{j in image} w_ij,

a symmetric system, positive definite whenever some pixel is kept, solved per channel. Instead of
the reference's per-image ``scipy.sparse.linalg.spsolve`` we solve all images, channels and
fractions at once with a Jacobi-preconditioned conjugate gradient in float64 (the operator is a
masked 3x3 convolution), to a relative residual ``tol``; the tests check it against spsolve.
Then ``noise * N(0,1)`` is added to the imputed pixels. If every pixel is removed (LeRF with
``floor(HW p) = 0``) there is no data: the solution is 0 plus noise.

The imputation is affine-equivariant per channel (weights sum to 1), so imputing normalised
inputs equals normalising imputed [0,1] images; only ``noise`` is in input units: pass
``0.01 / std_c`` (a list, one per channel) to match the reference's 0.01 in [0,1] space.

Per-sample value: mean over fractions of the target's softmax probability on the imputed image;
curves (N, P) and ``extras['hit']`` (top-1 == target, for accuracy curves) are returned.
MoRF: lower is better. LeRF: higher is better.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xkd.metrics._forward import forward_logits, output_scores, resolve_target
from xkd.metrics._ops import check_map, stable_rank
from xkd.metrics.base import MetricResult, RandomParams, register_metric

_E, _D = 1.0 / 6.0, 1.0 / 12.0
NEIGHBOUR_WEIGHTS = ((_D, _E, _D), (_E, 0.0, _E), (_D, _E, _D))


def _kernel(device: torch.device) -> torch.Tensor:
    return torch.tensor(NEIGHBOUR_WEIGHTS, dtype=torch.float64, device=device).view(1, 1, 3, 3)


def linear_impute(x: torch.Tensor, removed: torch.Tensor, tol: float = 1e-10,
                  max_iter: int | None = None) -> torch.Tensor:
    """Noise-free linear imputation (N,C,H,W) float64 of the pixels where ``removed`` (N,1,H,W)."""
    n, c, h, w = x.shape
    k = _kernel(x.device)
    xs = x.double().reshape(n * c, 1, h, w)
    r = removed.to(torch.float64).repeat_interleave(c, dim=0)
    wsum = F.conv2d(torch.ones(1, 1, h, w, dtype=torch.float64, device=x.device), k, padding=1)

    def op(v: torch.Tensor) -> torch.Tensor:
        return r * (wsum * v - F.conv2d(r * v, k, padding=1))

    b = r * F.conv2d((1.0 - r) * xs, k, padding=1)
    dims = (1, 2, 3)
    bnorm = b.flatten(1).norm(dim=1)
    v = torch.zeros_like(b)
    res = b.clone()
    z = res / wsum
    p = z.clone()
    rz = (res * z).sum(dims)
    for _ in range(max_iter or 4 * h * w):
        if bool((res.flatten(1).norm(dim=1) <= tol * bnorm).all()):
            break
        ap = op(p)
        pap = (p * ap).sum(dims)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=1e-300), torch.zeros_like(pap))
        v = v + alpha.view(-1, 1, 1, 1) * p
        res = res - alpha.view(-1, 1, 1, 1) * ap
        z = res / wsum
        rz_new = (res * z).sum(dims)
        beta = torch.where(rz > 0, rz_new / rz.clamp(min=1e-300), torch.zeros_like(rz))
        p = z + beta.view(-1, 1, 1, 1) * p
        rz = rz_new
    out = torch.where(r > 0, v, xs)
    return out.view(n, c, h, w)


def _noise_std(noise: float | list[float], like: torch.Tensor) -> torch.Tensor:
    std = torch.as_tensor(noise, dtype=torch.float64, device=like.device).reshape(-1)
    return std.view(1, -1, 1, 1) if std.numel() > 1 else std.view(1, 1, 1, 1)


def noisy_linear_impute(x: torch.Tensor, removed: torch.Tensor, noise: float | list[float],
                        generator: torch.Generator, tol: float = 1e-10,
                        max_batch: int = 256) -> torch.Tensor:
    """ROAD's noisy linear imputer: linear imputation plus ``noise * N(0,1)`` on removed pixels.

    The noise for all of ``x`` is drawn at once (independent of ``max_batch``); the solve runs
    ``max_batch`` images at a time.
    """
    eps = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, torch.float64)
    std = _noise_std(noise, x)
    out = torch.empty_like(x)
    for s in range(0, x.shape[0], max_batch):
        rm = removed[s:s + max_batch].bool()
        imp = linear_impute(x[s:s + max_batch], rm, tol)
        out[s:s + max_batch] = torch.where(rm, imp + std * eps[s:s + max_batch], imp).to(x.dtype)
    return out


Fraction = Annotated[float, Field(gt=0, lt=1)]


class ROADParams(RandomParams):
    percentages: list[Fraction] = Field([0.1, 0.3, 0.5, 0.7, 0.9], min_length=1,
                                        description="fractions p of pixels, each in (0, 1)")
    noise: float | list[float] = Field(0.01, description="imputation noise std, input units")
    tie_noise: float = Field(1e-4, ge=0, description="tie-breaker std on the normalised map")
    tol: float = Field(1e-10, gt=0, description="CG relative residual tolerance")
    output: Literal["softmax", "logit"] = "softmax"
    max_batch: int = Field(256, ge=1)


def road(
    model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
    target: torch.Tensor | None = None, *, generator: torch.Generator, order: str = "morf",
    percentages: list[float] = (0.1, 0.3, 0.5, 0.7, 0.9), noise: float | list[float] = 0.01,
    tie_noise: float = 1e-4, tol: float = 1e-10, output: str = "softmax", max_batch: int = 256,
) -> MetricResult:
    """ROAD curve over ``percentages`` in ``order`` ('morf' or 'lerf'), per sample."""
    a = check_map(attribution, like=x)
    n_img, _, h, w = x.shape
    hw = h * w
    target, _ = resolve_target(model, x, target, max_batch)
    flat = a.reshape(n_img, -1).double()
    mn, mx = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    flat = (flat - mn) / (mx - mn + 1e-5)
    if tie_noise > 0:
        flat = flat + tie_noise * torch.randn(n_img, hw, generator=generator,
                                              device=generator.device).to(flat.device, flat.dtype)
    rank = stable_rank(flat).view(n_img, 1, h, w)
    probs = torch.empty(n_img, len(percentages), dtype=torch.float64)
    hits = torch.empty_like(probs)
    for j, p in enumerate(percentages):
        k = math.floor(hw * p)
        removed = rank < k if order == "morf" else rank >= k
        imputed = noisy_linear_impute(x, removed, noise, generator, tol, max_batch)
        logits = forward_logits(model, imputed, max_batch)
        probs[:, j] = output_scores(logits, target, output).double().cpu()
        hits[:, j] = (logits.argmax(1) == target).double().cpu()
    return MetricResult(probs.mean(1), probs, torch.tensor(list(percentages), dtype=torch.float64),
                        extras={"hit": hits},
                        info={"order": order, "noise": noise, "tie_noise": tie_noise,
                              "output": output, "imputer": "noisy_linear (CG)"})


def road_morf(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
              target: torch.Tensor | None = None, **kw) -> MetricResult:
    """ROAD, most relevant pixels removed first; lower is better."""
    return road(model, x, attribution, target, order="morf", **kw)


def road_lerf(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
              target: torch.Tensor | None = None, **kw) -> MetricResult:
    """ROAD, least relevant pixels removed first; higher is better."""
    return road(model, x, attribution, target, order="lerf", **kw)


_common = dict(category="faithfulness", needs=("model", "x", "attribution"), optional=("target",))
register_metric("road_morf", road_morf, ROADParams, higher_is_better=False,
                description="ROAD MoRF with noisy linear imputation (Rong et al., ICML 2022): "
                "target probability after removing the top-p pixels", **_common)
register_metric("road_lerf", road_lerf, ROADParams, higher_is_better=True,
                description="ROAD LeRF with noisy linear imputation (Rong et al., ICML 2022): "
                "target probability keeping only the top-p pixels", **_common)
