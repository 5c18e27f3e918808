"""Teacher filtering and relabelling of fake samples (cGAN-KD M2, seed_methods.md section 5.4).

Quantile convention: the cutoff is ``torch.quantile(values, q)`` (linear interpolation between
order statistics, q in (0, 1]) and a sample is kept when its value is **<= the cutoff**
(inclusive), so q = 1 keeps every sample and ties at the cutoff are all kept.
Classification: per class c, values are the teacher cross-entropy of the fakes labelled c
against c, cutoff = the class's q-quantile (reference q = 0.9). Regression: values are
|f_t(x) - y| over all fakes, one cutoff (reference q = 0.7); with ``relabel`` the kept samples'
labels become the teacher's prediction (optionally clipped to the label range first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xkd.errors import ConfigError


def check_quantile(quantile: float, path: str = "quantile") -> None:
    """One-line ConfigError unless 0 < quantile <= 1."""
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile <= 1:
        raise ConfigError(path, f"{quantile!r} is outside (0, 1]; use e.g. 0.9 (keep the best 90%)")


def _keep_below_quantile(values: torch.Tensor, quantile: float) -> torch.Tensor:
    cutoff = torch.quantile(values.double(), float(quantile))
    return values.double() <= cutoff


def filter_classification(teacher_logits: torch.Tensor, labels: torch.Tensor,
                          quantile: float) -> torch.Tensor:
    """Bool mask (N,): per class, keep fakes whose teacher CE against their label is <= the class's
    ``quantile``-quantile of that CE (cGAN-KD section 5.4, classification)."""
    check_quantile(quantile)
    labels = labels.long()
    ce = F.cross_entropy(teacher_logits.double(), labels, reduction="none")
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels):
        rows = (labels == c).nonzero(as_tuple=True)[0]
        keep[rows] = _keep_below_quantile(ce[rows], quantile).cpu()
    return keep


def filter_regression(teacher_pred: torch.Tensor, labels: torch.Tensor, quantile: float,
                      relabel: bool, clip: tuple[float, float] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep mask, labels): keep fakes with |pred - y| <= the ``quantile``-quantile of all errors;
    with ``relabel`` the kept labels are replaced by ``pred`` (clipped to ``clip`` if given),
    the dropped ones keep their label (cGAN-KD section 5.4, regression)."""
    check_quantile(quantile)
    pred = teacher_pred.detach().float().flatten()
    if clip is not None:
        pred = pred.clamp(float(clip[0]), float(clip[1]))
    y = labels.float().flatten()
    keep = _keep_below_quantile((pred - y).abs(), quantile).cpu()
    new = torch.where(keep.to(pred.device), pred, y) if relabel else y.clone()
    return keep, new
