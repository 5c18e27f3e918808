"""Perturbation faithfulness: deletion / insertion AUC (RISE) and faithfulness correlation.

Deletion and insertion follow Petsiuk, Das and Saenko, "RISE", BMVC 2018 (arXiv:1806.07421),
reference/xai_metrics.md §1.1: pixels are ranked by saliency (stable descending sort, ties in
row-major index order); ``s = ceil(HW/steps)`` pixels per step, ``T = ceil(HW/s)`` steps; at step
t the first ``min(t*s, HW)`` pixels (all channels) are replaced by the baseline (deletion) or
restored from the image into a blurred copy (insertion). The curve ``y_t`` (t = 0..T, t = 0
included) is the softmax probability of the target class; the score is the normalised
trapezoid ``AUC = (1/T)[sum_t y_t - (y_0 + y_T)/2]`` over x = t/T in [0, 1].
All N*(2T+1) forwards are stacked into batches of ``max_batch``; the clean forward is shared.

Faithfulness correlation follows Bhatt, Weller and Moura, IJCAI 2020 (arXiv:2005.00631), §1.5:
``mu_F = Pearson_S(sum_{i in S} a_i, f(x) - f(x with S set to the baseline))`` over ``runs``
random subsets S of whole pixels of fixed size, drawn from the explicit generator.
"""

from __future__ import annotations

from typing import Literal, Union

import torch
from pydantic import Field
from torch import nn

from xkd.errors import UserError
from xkd.metrics._forward import masked_curve, output_scores, perturbed_scores, resolve_target
from xkd.metrics._ops import (
    check_map, pearson_rows, stable_rank, steps_schedule, substrate, trapezoid_auc,
)
from xkd.metrics.base import MetricParams, MetricResult, RandomParams, register_metric

Fill = Union[Literal["zero", "mean", "blur"], float]
Output = Literal["softmax", "logit"]


class DeletionParams(MetricParams):
    steps: int = Field(32, ge=1, description="number of steps T (pixels per step = ceil(HW/T))")
    baseline: Fill = Field("zero", description="replacement: zero, mean (per channel), blur, number")
    blur_size: int = Field(11, ge=1, description="Gaussian kernel size for 'blur'")
    blur_sigma: float = Field(5.0, gt=0, description="Gaussian sigma for 'blur'")
    output: Output = "softmax"
    max_batch: int = Field(256, ge=1, description="perturbed images per forward")


class InsertionParams(DeletionParams):
    baseline: Fill = Field("blur", description="starting image: blur (RISE), zero, mean, number")


def deletion_insertion(
    model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
    target: torch.Tensor | None = None, *, steps: int = 32,
    deletion_baseline: Fill = "zero", insertion_start: Fill = "blur", blur_size: int = 11,
    blur_sigma: float = 5.0, output: str = "softmax", max_batch: int = 256,
    modes: tuple[str, ...] = ("deletion", "insertion"),
) -> dict[str, MetricResult]:
    """Deletion and/or insertion AUC with curves (N, T+1); one shared clean forward."""
    a = check_map(attribution, like=x)
    n_img, hw = x.shape[0], x.shape[2] * x.shape[3]
    target, logits = resolve_target(model, x, target, max_batch)
    clean = output_scores(logits, target, output).float().view(-1, 1)
    rank = stable_rank(a.reshape(n_img, -1)).view_as(a)
    t_steps, counts = steps_schedule(hw, steps)
    xs = torch.arange(t_steps + 1, dtype=torch.float64) / t_steps
    info = {"steps": t_steps, "pixels_per_step": int(counts[1]), "output": output,
            "blur": (blur_size, blur_sigma), "tie_rule": "stable descending, row-major"}
    res: dict[str, MetricResult] = {}
    for mode in modes:
        if mode == "deletion":
            sub = substrate(x, deletion_baseline, blur_size, blur_sigma)
            ys = masked_curve(model, x, rank, counts[1:], sub, x, target, output, max_batch)
            curve = torch.cat([clean, ys], dim=1)
            fill = deletion_baseline
        elif mode == "insertion":
            start = substrate(x, insertion_start, blur_size, blur_sigma)
            ys = masked_curve(model, x, rank, counts[:-1], x, start, target, output, max_batch)
            curve = torch.cat([ys, clean], dim=1)
            fill = insertion_start
        else:
            raise UserError(f"mode '{mode}' unknown; allowed: deletion, insertion")
        curve = curve.double().cpu()
        res[mode] = MetricResult(trapezoid_auc(curve), curve, xs,
                                 extras={"fraction": counts.double() / hw},
                                 info={**info, "fill": fill})
    return res


def deletion(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
             target: torch.Tensor | None = None, *, baseline: Fill = "zero", **kw) -> MetricResult:
    """Deletion AUC (RISE); lower is better."""
    return deletion_insertion(model, x, attribution, target, deletion_baseline=baseline,
                              modes=("deletion",), **kw)["deletion"]


def insertion(model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
              target: torch.Tensor | None = None, *, baseline: Fill = "blur", **kw) -> MetricResult:
    """Insertion AUC (RISE), starting from ``baseline`` (blurred image); higher is better."""
    return deletion_insertion(model, x, attribution, target, insertion_start=baseline,
                              modes=("insertion",), **kw)["insertion"]


class FaithfulnessCorrelationParams(RandomParams):
    runs: int = Field(100, ge=2, description="number of random subsets")
    subset_fraction: float = Field(0.05, gt=0, le=1, description="|S| as a fraction of H*W pixels")
    baseline: Fill = "zero"
    blur_size: int = Field(11, ge=1)
    blur_sigma: float = Field(5.0, gt=0)
    output: Output = Field("logit", description="Quantus default: logits (softmax=False)")
    max_batch: int = Field(256, ge=1)


def faithfulness_correlation(
    model: nn.Module, x: torch.Tensor, attribution: torch.Tensor,
    target: torch.Tensor | None = None, *, generator: torch.Generator, runs: int = 100,
    subset_fraction: float = 0.05, baseline: Fill = "zero", blur_size: int = 11,
    blur_sigma: float = 5.0, output: str = "logit", max_batch: int = 256,
) -> MetricResult:
    """Faithfulness correlation (Bhatt et al. 2020); higher is better, NaN if a side is constant.

    Subsets are whole pixels (all channels), ``|S| = max(1, round(subset_fraction * HW))``,
    drawn per run as the top-|S| of ``torch.rand(N, HW, generator=generator)``.
    """
    a = check_map(attribution, like=x)
    n_img, hw = x.shape[0], x.shape[2] * x.shape[3]
    k = max(1, int(round(subset_fraction * hw)))
    target, logits = resolve_target(model, x, target, max_batch)
    clean = output_scores(logits, target, output).float()
    subsets = torch.zeros(n_img, runs, hw, dtype=torch.bool, device=x.device)
    for r in range(runs):
        u = torch.rand(n_img, hw, generator=generator, device=generator.device)
        subsets[:, r].scatter_(1, u.topk(k, dim=1).indices.to(x.device), True)
    base = substrate(x, baseline, blur_size, blur_sigma)
    shape = (1,) + tuple(a.shape[1:])

    def build(idx: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        i, r = idx // runs, idx % runs
        m = subsets[i, r].view(-1, *shape[1:])
        return torch.where(m, base[i], x[i]) if out is None else torch.where(m, base[i], x[i], out=out)

    scores = perturbed_scores(model, n_img * runs, x, build, lambda idx: idx // runs, target,
                              output, max_batch).view(n_img, runs)
    drops = clean.view(-1, 1) - scores
    sums = (subsets.double() * a.reshape(n_img, 1, hw).double()).sum(-1)
    vals = pearson_rows(sums, drops.double()).cpu()
    return MetricResult(vals, extras={"attribution_sums": sums.cpu(), "drops": drops.double().cpu()},
                        info={"subset_pixels": k, "runs": runs, "output": output,
                              "baseline": baseline})


def _reg() -> None:
    common = dict(category="faithfulness", needs=("model", "x", "attribution"), optional=("target",))
    register_metric("deletion", deletion, DeletionParams, higher_is_better=False,
                    description="Deletion AUC (Petsiuk et al., RISE, BMVC 2018): softmax-prob curve "
                    "as most-salient pixels are replaced by a baseline", **common)
    register_metric("insertion", insertion, InsertionParams, higher_is_better=True,
                    description="Insertion AUC (Petsiuk et al., RISE, BMVC 2018): most-salient "
                    "pixels restored into a blurred image", **common)
    register_metric("faithfulness_correlation", faithfulness_correlation,
                    FaithfulnessCorrelationParams, higher_is_better=True,
                    description="Faithfulness correlation (Bhatt et al., IJCAI 2020): Pearson of "
                    "subset attribution sums and prediction drops", **common)


_reg()
