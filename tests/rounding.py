"""Tolerances for comparing two float32 computations of the same explanation, derived from the
arithmetic rather than from one machine.

Two correct implementations of a saliency map (ours vs Captum called directly, one batch size vs
another, AVX2 vs AVX-512 kernels) differ only in the order in which float32 sums are accumulated.
A sum of ``n`` terms computed in any order has an error of at most ``gamma_n * sum |terms|`` with
``gamma_n ~ n * u``; the probabilistic bound of Higham & Mary (2019, "A new approach to
probabilistic rounding error analysis", Thm. 2.4) replaces ``n`` by ``lambda * sqrt(n)``, holding
with probability at least ``1 - 2 exp(-lambda^2 / 2)`` (``lambda = 6``: 3e-8). Through a network the
relative errors of the layers add, so ``n`` is the number of terms accumulated along one path:
every conv/linear layer's fan-in and the global-average-pool window for the forward pass, plus
every fan-out (gradients sum over it) for methods that also run the backward pass, plus what the
method itself sums (IG's steps, SmoothGrad's samples, Grad-CAM's pooled gradients and channels).
Two implementations may err on opposite sides, hence the factor 2:

    atol_i = 2 * lambda * sqrt(n) * u * scale_i,    u = torch.finfo(torch.float32).eps

``scale_i`` is the magnitude of the quantities that carried the rounding error, in the units of
sample ``i``'s max-normalised map: 1 for gradient maps (the max pixel of the reference is the
magnitude the backward sums produced), and for occlusion ``sum_c |W_tc p_c| + |b_t|`` (the terms of
the target logit, which occlusion subtracts from a nearly equal logit) divided by the largest raw
occlusion score (the normaliser), which is where a one-ulp logit difference becomes 1e-5.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EPS32 = torch.finfo(torch.float32).eps
LAMBDA = 6.0


def accumulated_terms(model: nn.Module, pooled_window: int, backward: bool) -> int:
    """Terms summed along one path through ``model``: each conv/linear layer's fan-in and the
    global-average-pool window (``pooled_window`` = H*W of the last stage); with ``backward`` also
    each fan-out and the pool window again (the gradient sums over them)."""
    n = pooled_window * (2 if backward else 1)
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            k = math.prod(mod.kernel_size) // mod.groups
            n += k * (mod.in_channels + (mod.out_channels if backward else 0))
        elif isinstance(mod, nn.Linear):
            n += mod.in_features + (mod.out_features if backward else 0)
    return n


def _eval_features(model: nn.Module, x: torch.Tensor):
    """``model.features(x)`` in eval mode without gradients, leaving the model's modes as they were."""
    modes = [m.training for m in model.modules()]
    try:
        with torch.no_grad():
            return model.eval().features(x)
    finally:
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def logit_scale(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``sum_c |W_tc p_c| + |b_t|`` per sample: the magnitude of the terms of the target logit
    (``model.fc`` on the pooled features), against which its rounding error is bounded."""
    f = _eval_features(model, x)
    w, b = model.fc.weight.detach()[t], model.fc.bias.detach()[t]
    return (w * f.pooled).abs().sum(1) + b.abs()


def occlusion_scale(model: nn.Module, x: torch.Tensor, t: torch.Tensor, raw_max: torch.Tensor) -> torch.Tensor:
    """Occlusion's map is (logit - occluded logit) / max over the map: the logits' rounding error
    arrives divided by ``raw_max`` (the per-sample normaliser)."""
    return logit_scale(model, x, t) / raw_max.clamp_min(torch.finfo(torch.float32).tiny)


def rounding_atol(model: nn.Module, x: torch.Tensor, scale: torch.Tensor | float = 1.0,
                  backward: bool = True, extra_terms: int = 0) -> torch.Tensor:
    """Per-sample absolute tolerance (shape (B, 1, 1, 1)) for max-normalised maps of ``x``;
    ``extra_terms``: what the method itself accumulates on top of the network."""
    last = _eval_features(model, x[:1]).stages[-1]
    n = accumulated_terms(model, last.shape[-1] * last.shape[-2], backward) + extra_terms
    s = torch.as_tensor(scale, dtype=torch.float32).expand(len(x)).reshape(-1, 1, 1, 1)
    return 2 * LAMBDA * math.sqrt(n) * EPS32 * s


def assert_within_rounding(ours: torch.Tensor, ref: torch.Tensor, atol: torch.Tensor) -> None:
    """Every element of ``ours`` within its sample's ``atol`` of ``ref``; says by how much if not."""
    diff = (ours - ref.detach()).abs()
    over = diff > atol
    if over.any():
        ratio = (diff / atol).amax().item()
        raise AssertionError(f"{int(over.sum())} values beyond float32 rounding: max |diff| "
                             f"{diff.max().item():.3e}, {ratio:.1f}x the tolerance "
                             f"(atol per sample {atol.flatten().tolist()})")
