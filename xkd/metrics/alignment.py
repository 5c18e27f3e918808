"""Agreement between two maps, e.g. student vs teacher (reference/xai_metrics.md §3), batched.

Inputs: ``attribution`` (the evaluated model's map) and ``second_map`` (the reference map), both
(N,1,H,W). If their sizes differ, ``second_map`` is resized to ``attribution``'s size (bilinear,
§3.0(3)). Metrics with a ``size`` parameter first average-pool both maps to ``size x size`` when
they are larger (a coarse common grid). All are symmetric and higher means more agreement.

- cosine (e2KD's alignment, Parchami-Araghi et al., ECCV 2024): flattened maps; a zero map gives
  0 (torch/e2KD eps convention) and is flagged in ``extras['zero_map']``.
- Spearman rho: Pearson of average ranks (ties averaged, the scipy default); NaN for a constant
  map (scipy convention). ``absolute=True`` ranks |a| (Adebayo et al. report both).
- Kendall tau-b: ``(n_c - n_d) / sqrt((n0 - n1)(n0 - n2))`` (scipy's default variant), exact
  O(n^2) pair counting in chunks of pixel rows; NaN for a constant map.
- SSIM (Wang et al., IEEE TIP 2004, the authors' reference variant): Gaussian window 11x11,
  sigma 1.5, 'valid' windows only (the window shrinks to the largest odd size <= min(H, W) for
  small maps), weighted (population) statistics, maps min-max normalised per sample to [0, 1]
  (a constant map becomes 0), L = 1, C1 = (0.01 L)^2, C2 = (0.03 L)^2, mean over windows.
- top-k IoU: ``|T_k and S_k| / |T_k or S_k|`` for k in ``k_fractions`` of H*W, from the expected
  intersection under uniformly random tie-breaking (exact for tie-free maps), so zero plateaus
  of ReLU'd maps do not create agreement by index order. Value: mean over k; curves (N, K).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from xkd.errors import UserError
from xkd.metrics._ops import average_ranks, check_map, gaussian_kernel, pearson_rows, topk_inclusion
from xkd.metrics.base import MetricParams, MetricResult, register_metric


def _pair(attribution: torch.Tensor, second_map: torch.Tensor,
          size: int | None = None, flat: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Both maps as float64, at a common resolution, flattened to (N, n) unless ``flat=False``."""
    a = check_map(attribution).double()
    b = check_map(second_map, "second_map").double()
    if b.shape[0] != a.shape[0]:
        raise UserError(f"second_map has {b.shape[0]} maps for {a.shape[0]} attributions")
    if b.shape[2:] != a.shape[2:]:
        b = F.interpolate(b, size=a.shape[2:], mode="bilinear", align_corners=False)
    if size is not None and (a.shape[2] > size or a.shape[3] > size):
        a, b = F.adaptive_avg_pool2d(a, size), F.adaptive_avg_pool2d(b, size)
    return (a.flatten(1), b.flatten(1)) if flat else (a, b)


class SizeParams(MetricParams):
    size: int | None = Field(None, ge=1, description="pool both maps to size x size if larger")


def cosine(attribution: torch.Tensor, second_map: torch.Tensor, *,
           size: int | None = None) -> MetricResult:
    """Cosine similarity of the flattened maps."""
    a, b = _pair(attribution, second_map, size)
    den = a.norm(dim=1) * b.norm(dim=1)
    zero = den == 0
    vals = torch.where(zero, torch.zeros_like(den), (a * b).sum(1) / den.clamp(min=1e-300))
    return MetricResult(vals.cpu(), extras={"zero_map": zero.cpu()})


class SpearmanParams(SizeParams):
    absolute: bool = Field(False, description="rank |a| instead of a")


def spearman(attribution: torch.Tensor, second_map: torch.Tensor, *, size: int | None = None,
             absolute: bool = False) -> MetricResult:
    """Spearman rank correlation with average ranks for ties."""
    a, b = _pair(attribution, second_map, size)
    if absolute:
        a, b = a.abs(), b.abs()
    return MetricResult(pearson_rows(average_ranks(a), average_ranks(b)).cpu())


def kendall_tau_b(a: torch.Tensor, b: torch.Tensor, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """Kendall tau-b of matching rows (N, n), exact pair counting, float64 (N,)."""
    n_rows, n = a.shape
    c = max(1, chunk_elements // max(1, n_rows * n))
    conc = torch.zeros(n_rows, dtype=torch.float64, device=a.device)
    ties_a, ties_b = conc.clone(), conc.clone()
    for i in range(0, n, c):
        da = torch.sign(a[:, i:i + c, None] - a[:, None, :])
        db = torch.sign(b[:, i:i + c, None] - b[:, None, :])
        conc += (da * db).sum((1, 2))
        ties_a += (da == 0).sum((1, 2))
        ties_b += (db == 0).sum((1, 2))
    n0 = n * (n - 1) / 2.0
    n1, n2 = (ties_a - n) / 2.0, (ties_b - n) / 2.0
    den = torch.sqrt((n0 - n1) * (n0 - n2))
    tau = (conc / 2.0) / den.clamp(min=1e-300)
    return torch.where(den > 0, tau.clamp(-1, 1), torch.full_like(tau, float("nan")))


class KendallParams(MetricParams):
    size: int | None = Field(32, ge=1, description="pool both maps to size x size if larger")


def kendall(attribution: torch.Tensor, second_map: torch.Tensor, *, size: int | None = 32) -> MetricResult:
    """Kendall tau-b (ties handled as in scipy.stats.kendalltau)."""
    a, b = _pair(attribution, second_map, size)
    return MetricResult(kendall_tau_b(a, b).cpu(), info={"size": size})


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp(min=1e-300), torch.zeros_like(m))


def ssim_maps(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (N,) of (N,1,H,W) maps after per-sample min-max normalisation (variant above)."""
    a, b = _minmax(a.double()), _minmax(b.double())
    w = min(window, a.shape[2], a.shape[3])
    w = w if w % 2 == 1 else w - 1
    g = gaussian_kernel(w, sigma, torch.float64, a.device).view(1, 1, w, w)
    mu_a, mu_b = F.conv2d(a, g), F.conv2d(b, g)
    s_aa = F.conv2d(a * a, g) - mu_a**2
    s_bb = F.conv2d(b * b, g) - mu_b**2
    s_ab = F.conv2d(a * b, g) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2)
    return (num / den).flatten(1).mean(1)


class SSIMParams(SizeParams):
    window: int = Field(11, ge=1, description="Gaussian window side (odd)")
    sigma: float = Field(1.5, gt=0)


def ssim(attribution: torch.Tensor, second_map: torch.Tensor, *, size: int | None = None,
         window: int = 11, sigma: float = 1.5) -> MetricResult:
    """SSIM, Gaussian 11/1.5, valid windows, min-max normalised maps, L = 1."""
    a, b = _pair(attribution, second_map, size, flat=False)
    return MetricResult(ssim_maps(a, b, window, sigma).cpu(),
                        info={"window": window, "sigma": sigma, "variant": "gaussian-valid-minmax"})


class TopKIoUParams(SizeParams):
    k_fractions: list[float] = Field([0.01, 0.02, 0.05, 0.1, 0.25], min_length=1)


def topk_iou(attribution: torch.Tensor, second_map: torch.Tensor, *, size: int | None = None,
             k_fractions: list[float] = (0.01, 0.02, 0.05, 0.1, 0.25)) -> MetricResult:
    """Top-k IoU curves over ``k_fractions``; value = mean over k."""
    a, b = _pair(attribution, second_map, size)
    n_rows, n = a.shape
    curves = []
    for f in k_fractions:
        k = min(n, max(1, int(round(f * n))))
        kk = torch.full((n_rows,), k, dtype=torch.long, device=a.device)
        inter = (topk_inclusion(a, kk) * topk_inclusion(b, kk)).sum(1)
        curves.append(inter / (2 * k - inter))
    cur = torch.stack(curves, 1).cpu()
    return MetricResult(cur.mean(1), cur, torch.tensor(list(k_fractions), dtype=torch.float64))


_common = dict(category="alignment", higher_is_better=True, needs=("attribution", "second_map"))
register_metric("cosine", cosine, SizeParams,
                description="Cosine similarity of two maps (e2KD, Parchami-Araghi et al., ECCV 2024)",
                **_common)
register_metric("spearman", spearman, SpearmanParams,
                description="Spearman rank correlation, average ranks (Adebayo et al., NeurIPS 2018)",
                **_common)
register_metric("kendall_tau", kendall, KendallParams,
                description="Kendall tau-b rank correlation (Kendall 1945; scipy variant b)", **_common)
register_metric("ssim", ssim, SSIMParams,
                description="SSIM, Gaussian 11/1.5 (Wang et al., IEEE TIP 2004)", **_common)
register_metric("topk_iou", topk_iou, TopKIoUParams,
                description="Top-k IoU over several k (Krishna et al., feature agreement, 2022)",
                **_common)
