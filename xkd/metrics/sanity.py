"""Cascading model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018, arXiv:1810.03292); reference/xai_metrics.md §4.3.

On a deep copy of the model, layers that own parameters are randomised one after another from the
top (logits) down, cumulatively; after each step the explanations are recomputed with
``explainer_factory(randomised_copy)`` and compared with the original model's maps (from the same
factory) by Spearman rank correlation (on |a| by default, average ranks) and SSIM (the variant of
:mod:`xkd.metrics.alignment`). A method passes when similarity drops, so lower is better.

Randomisation: every parameter tensor of the layer is redrawn from a normal distribution
truncated at +-2 sigma (Adebayo et al. re-initialise with a truncated normal), sigma = the
tensor's original root-mean-square (0.01 where it was all zero), from the explicit generator.
Buffers (BatchNorm running statistics) are kept; Quantus' MPRT instead calls
``reset_parameters()`` on the global RNG.

Per-sample value: mean Spearman over the layer steps; curves (N, L) Spearman per step,
``extras['ssim']`` (N, L), ``info['layers']`` the module names in randomisation order.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from pydantic import Field
from torch import nn

from xkd.errors import NotApplicable
from xkd.metrics._forward import eval_mode, resolve_target
from xkd.metrics._ops import average_ranks, check_map, pearson_rows
from xkd.metrics.alignment import ssim_maps
from xkd.metrics.base import MetricResult, RandomParams, register_metric


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own floating-point parameters, in registration (input -> output) order."""
    return [(n, m) for n, m in model.named_modules()
            if any(p.is_floating_point() for p in m.parameters(recurse=False))]


@torch.no_grad()
def randomise_layer_(module: nn.Module, generator: torch.Generator) -> None:
    """Redraw the module's own parameters from N(0, rms^2) truncated at +-2 rms, in place."""
    for p in module.parameters(recurse=False):
        if not p.is_floating_point():
            continue
        rms = float(p.detach().double().pow(2).mean().sqrt())
        std = rms if rms > 0 else 0.01
        fresh = torch.empty(p.shape, dtype=p.dtype, device=generator.device)
        torch.nn.init.trunc_normal_(fresh, 0.0, std, -2 * std, 2 * std, generator=generator)
        p.copy_(fresh.to(p.device))


def _explain(explainer: Any, x: torch.Tensor, target: torch.Tensor, max_batch: int) -> torch.Tensor:
    fn = getattr(explainer, "explain", explainer)
    outs = []
    for s in range(0, x.shape[0], max_batch):
        with torch.enable_grad():
            outs.append(check_map(fn(x[s:s + max_batch], target[s:s + max_batch]), "explanation"))
    return torch.cat(outs).double()


class MPRTParams(RandomParams):
    absolute: bool = Field(True, description="Spearman on |a| (Quantus default abs=True)")
    max_layers: int | None = Field(None, ge=1, description="stop after this many layers")
    max_batch: int = Field(64, ge=1, description="images per explainer call")


def model_randomisation(
    model: nn.Module, x: torch.Tensor, explainer_factory: Callable[[nn.Module], Any],
    target: torch.Tensor | None = None, *, generator: torch.Generator, absolute: bool = True,
    max_layers: int | None = None, max_batch: int = 64,
) -> MetricResult:
    """Cascading randomisation: similarity to the original maps after each top-down layer step."""
    target, _ = resolve_target(model, x, target, max_batch)
    twin = copy.deepcopy(model)
    layers = parameter_layers(twin)[::-1][:max_layers]
    if not layers:
        raise NotApplicable("model_randomisation: the model has no layer with parameters")
    with eval_mode(twin):
        orig = _explain(explainer_factory(twin), x, target, max_batch)
        r_orig = average_ranks((orig.abs() if absolute else orig).flatten(1))
        rho, ss = [], []
        for _, module in layers:
            randomise_layer_(module, generator)
            maps = _explain(explainer_factory(twin), x, target, max_batch)
            r = average_ranks((maps.abs() if absolute else maps).flatten(1))
            rho.append(pearson_rows(r_orig, r))
            ss.append(ssim_maps(orig, maps))
    curves = torch.stack(rho, 1).cpu()
    return MetricResult(torch.nanmean(curves, dim=1), curves,
                        torch.arange(1, len(layers) + 1, dtype=torch.float64),
                        extras={"ssim": torch.stack(ss, 1).cpu()},
                        info={"layers": [n for n, _ in layers], "absolute": absolute,
                              "order": "top_down cascading"})


register_metric("model_randomisation", model_randomisation, MPRTParams, category="sanity",
                higher_is_better=False, needs=("model", "x", "explainer_factory"),
                optional=("target",),
                description="Cascading model-parameter randomisation, Spearman to the original "
                "maps (Adebayo et al., NeurIPS 2018)")
