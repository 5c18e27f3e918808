"""Loss functions shared by the distillers.

* :func:`task_loss`: cross-entropy for classification, MSE or L1 for regression.
* :func:`kd_loss`: Hinton et al. 2015, "Distilling the Knowledge in a Neural Network",
  T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), averaged over the batch (``batchmean``).
* :func:`hcl`: ReviewKD's hierarchical context loss (Chen et al., CVPR 2021, reference notes
  section 1.4): full-map MSE plus adaptive-average-pooled 4×4, 2×2, 1×1 MSE terms (a pool size l is
  skipped when l ≥ h), weights 1, ½, ¼, ⅛ of the terms used, normalised by their sum.
* :func:`weighted_hcl`: the same pyramid with a per-location weight map W (DESIGN 3.5): per-pixel
  error e = mean_c (U − T)², full term mean(W · e); each pooled term pools U, T and W the same way
  and takes mean(W_l · e_l). With W ≡ 1 it equals :func:`hcl`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xkd.errors import UserError

HCL_POOLS: tuple[int, ...] = (4, 2, 1)
"""Pool sizes of ReviewKD's HCL, in the order they are added (each with half the previous weight)."""


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: str = "classification",
              regression_loss: str = "mse") -> torch.Tensor:
    """Supervised loss: cross-entropy (classification) or MSE/L1 (regression, ``regression_loss``).

    For regression a (B,1) output is compared with (B,) float labels.
    """
    if task == "classification":
        return F.cross_entropy(logits, labels)
    if task != "regression":
        raise UserError(f"task '{task}' is not supported; allowed: classification, regression")
    out = logits.float()
    if out.dim() == 2 and out.shape[1] == 1 and labels.dim() == 1:
        out = out[:, 0]
    target = labels.to(out.dtype).reshape(out.shape)
    if regression_loss == "mse":
        return F.mse_loss(out, target)
    if regression_loss == "l1":
        return F.l1_loss(out, target)
    raise UserError(f"regression_loss '{regression_loss}' is not supported; allowed: mse, l1")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton KD: T² · KL(p_t^T ‖ p_s^T) with reduction ``batchmean`` (sum over classes, mean over B).

    ``weight`` (B,) >= 0 turns the mean over the batch into Σ_i w_i KL_i / Σ_i w_i (0 when every
    weight is 0): samples whose teacher input is missing (e.g. ``audio_mask`` = 0) are left out.
    """
    log_p_s = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=1)
    if weight is None:
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (T * T)
    per_sample = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
    w = weight.to(per_sample)
    return (per_sample * w).sum() / w.sum().clamp_min(1e-12) * (T * T)


def _pyramid_sizes(h: int) -> list[tuple[int, float]]:
    """(pool size, weight) of the HCL terms used for a level of height ``h`` (0 = full map)."""
    terms, w = [(0, 1.0)], 1.0
    for size in HCL_POOLS:
        if size >= h:
            continue
        w /= 2.0
        terms.append((size, w))
    return terms


def hcl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """ReviewKD HCL for one level: both maps (B,C,h,w) of the same shape."""
    s, t = student.float(), teacher.float()
    total, norm = torch.zeros((), device=s.device), 0.0
    for size, w in _pyramid_sizes(s.shape[2]):
        if size == 0:
            term = F.mse_loss(s, t)
        else:
            term = F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
        total = total + w * term
        norm += w
    return total / norm


def weighted_hcl(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Saliency-weighted HCL for one level; ``weight`` is (B,1,h,w), mean 1 per sample."""
    s, t, wmap = student.float(), teacher.float(), weight.float()
    total, norm = torch.zeros((), device=s.device), 0.0
    for size, w in _pyramid_sizes(s.shape[2]):
        if size == 0:
            e, wl = (s - t).pow(2).mean(dim=1, keepdim=True), wmap
        else:
            diff = F.adaptive_avg_pool2d(s, size) - F.adaptive_avg_pool2d(t, size)
            e, wl = diff.pow(2).mean(dim=1, keepdim=True), F.adaptive_avg_pool2d(wmap, size)
        total = total + w * (wl * e).mean()
        norm += w
    return total / norm


def warmup_factor(epoch: int | float, warmup_epochs: float) -> float:
    """ReviewKD's linear warm-up min(1, epoch / warmup_epochs) with a 0-indexed epoch (1 if no warm-up)."""
    if warmup_epochs <= 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch) / warmup_epochs))
