"""Infidelity and max-sensitivity (Yeh et al., NeurIPS 2019, arXiv:1901.09392) through Captum.

reference/xai_metrics.md §1.6 and §4.1. Both wrap ``captum.metrics`` and only supply the
perturbations, drawn from the explicit generator, image chunk by image chunk
(``max(1, max_batch // n_perturb_samples)`` images per chunk, in order), so a result is fixed by
(seed, max_batch).

Infidelity: ``INFD = E_I[(I^T Phi - (f(x) - f(x - I)))^2]`` with a pixel-level Gaussian
perturbation ``I ~ N(0, noise_std^2)`` per pixel, shared by all channels (local form,
``I = x - x'``, Captum's ``multiply_by_inputs=False``). Captum needs an attribution of the input's
shape; the pooled (N,1,H,W) map is broadcast to the C channels divided by C, so that
``I^T Phi = sum_p I_p a_p`` (the map is not counted C times). ``normalize=True`` applies the
optimal scaling beta (scale-invariant form). Lower is better.

Max-sensitivity: ``max_{j} ||Phi(x + d_j) - Phi(x)||_F / ||Phi(x)||_F`` over
``n_perturb_samples`` draws ``d_j ~ U[-radius, radius]`` per element (L-inf ball, radius in input
units). The explainer is any callable ``(x, target) -> (N,1,H,W)``; grad is re-enabled inside
Captum's no-grad block. Lower is better.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from captum.metrics import infidelity as captum_infidelity
from captum.metrics import sensitivity_max as captum_sensitivity_max
from pydantic import Field
from torch import nn

from xkd.metrics._forward import eval_mode, resolve_target
from xkd.metrics._ops import check_map
from xkd.metrics.base import MetricResult, RandomParams, register_metric


class InfidelityParams(RandomParams):
    n_perturb_samples: int = Field(10, ge=1)
    noise_std: float = Field(0.2, gt=0, description="std of the pixel perturbation, input units")
    normalize: bool = Field(True, description="optimal beta scaling (Yeh et al.)")
    output: Literal["softmax", "logit"] = "logit"
    max_batch: int = Field(256, ge=1)


def infidelity(
    model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
    target: torch.Tensor | None = None, *, generator: torch.Generator,
    n_perturb_samples: int = 10, noise_std: float = 0.2, normalize: bool = True,
    output: str = "logit", max_batch: int = 256,
) -> MetricResult:
    """Per-sample infidelity via ``captum.metrics.infidelity``; lower is better."""
    a = check_map(attribution, like=x)
    n_img, c, h, w = x.shape
    target, _ = resolve_target(model, x, target, max_batch)
    phi = (a / c).expand_as(x).contiguous()
    n = n_perturb_samples

    def forward(inp: torch.Tensor) -> torch.Tensor:
        out = model(inp)
        return out.softmax(dim=1) if output == "softmax" else out

    chunk = max(1, max_batch // n)
    vals = []
    with eval_mode(model):
        for s in range(0, n_img, chunk):
            xs = x[s:s + chunk]
            m = xs.shape[0]
            noise = noise_std * torch.randn(m * n, 1, h, w, generator=generator,
                                            device=generator.device).to(x.device, x.dtype)

            def perturb(inputs: torch.Tensor,
                        noise: torch.Tensor = noise) -> tuple[torch.Tensor, torch.Tensor]:
                pert = noise.expand_as(inputs)
                return pert, inputs - pert

            vals.append(captum_infidelity(forward, perturb, xs, phi[s:s + chunk],
                                          target=target[s:s + chunk], n_perturb_samples=n,
                                          normalize=normalize))
    return MetricResult(torch.cat(vals).double().cpu(),
                        info={"noise_std": noise_std, "n_perturb_samples": n,
                              "normalize": normalize, "output": output})


def explanation_function(explainer: Any) -> Callable[..., torch.Tensor]:
    """Adapt an explainer (callable or object with ``.explain``) to Captum's explanation_func."""
    fn = getattr(explainer, "explain", explainer)

    def explain(inputs: Any, target: torch.Tensor | None = None, **_: Any) -> Any:
        as_tuple = isinstance(inputs, tuple)
        with torch.enable_grad():
            out = check_map(fn(inputs[0] if as_tuple else inputs, target), "explanation").float()
        return (out,) if as_tuple else out  # Captum passes a tuple once and expects one back

    return explain


class MaxSensitivityParams(RandomParams):
    radius: float = Field(0.02, gt=0, description="L-inf radius, input units (Captum default)")
    n_perturb_samples: int = Field(10, ge=1)
    norm: Literal["fro"] = "fro"
    max_batch: int = Field(64, ge=1, description="perturbed images per explainer call")


def max_sensitivity(
    explainer: Any, x: torch.Tensor, target: torch.Tensor, *, generator: torch.Generator,
    radius: float = 0.02, n_perturb_samples: int = 10, norm: str = "fro", max_batch: int = 64,
) -> MetricResult:
    """Per-sample max-sensitivity via ``captum.metrics.sensitivity_max``; lower is better."""
    n = n_perturb_samples
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    explain = explanation_function(explainer)
    chunk = max(1, max_batch // n)
    vals = []
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        d = torch.rand((xs.shape[0] * n,) + tuple(x.shape[1:]), generator=generator,
                       device=generator.device).to(x.device, x.dtype)
        d = (2.0 * d - 1.0) * radius

        def perturb(inputs: torch.Tensor, perturb_radius: float, d: torch.Tensor = d) -> torch.Tensor:
            return inputs + d

        vals.append(captum_sensitivity_max(explain, xs, perturb_func=perturb, perturb_radius=radius,
                                           n_perturb_samples=n, norm_ord=norm,
                                           target=target[s:s + chunk]))
    return MetricResult(torch.cat(vals).double().cpu(),
                        info={"radius": radius, "n_perturb_samples": n, "norm": norm})


register_metric("infidelity", infidelity, InfidelityParams, category="faithfulness",
                higher_is_better=False, needs=("model", "x", "attribution"), optional=("target",),
                description="Infidelity with pixel Gaussian perturbations (Yeh et al., NeurIPS "
                "2019), captum.metrics.infidelity")
register_metric("max_sensitivity", max_sensitivity, MaxSensitivityParams, category="faithfulness",
                higher_is_better=False, needs=("explainer", "x", "target"),
                description="Max-sensitivity in an L-inf ball (Yeh et al., NeurIPS 2019), "
                "captum.metrics.sensitivity_max")
