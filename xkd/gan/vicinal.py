"""CcGAN vicinal training batches for continuous labels (Ding et al., CcGAN, ICLR 2021, eqs. 5-8;
cGAN-KD seed_methods.md section 5.2).

Labels are min-max normalised to [0, 1]. A batch draws target labels y_j + eps (y_j uniform over
the distinct real labels, eps ~ N(0, sigma^2), sigma by the rule of thumb 1.06 std(y) n^(-1/5)),
one real image from each target's vicinity and one fake label per target, uniform in
[target - kappa, target + kappa]. Hard vicinity (HVDL): real labels with |y_i - target| <= kappa,
all weights 1. Soft vicinity (SVDL): weights w = exp(-nu (y - target)^2) with nu = 1 / kappa^2,
real images drawn among labels whose weight is >= ``SOFT_THRESHOLD``. kappa defaults to a multiple
(5 in the reference) of the largest gap between sorted distinct normalised labels.

Known differences from the CcGAN code (kept while the measured cgan_kd experiments use them): in
the soft case the fake labels stay within +-kappa, where CcGAN draws them over the whole radius
with weight >= the threshold (``vicinity_radius``, ~2.6 kappa); a noisy target outside [0, 1]
falls back to y_j instead of re-drawing eps; and ``xkd.gan.training`` conditions the G update on
labels drawn like these fake labels, where CcGAN uses the noisy targets y_j + eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xkd.errors import UserError

SOFT_THRESHOLD = 1e-3
"""Soft vicinity: real labels whose weight exp(-nu d^2) falls below this are never drawn."""


def rule_of_thumb_sigma(labels: torch.Tensor) -> float:
    """Silverman's rule of thumb 1.06 * std(y) * n^(-1/5) (population std, ddof=0)."""
    y = labels.double().flatten()
    return float(1.06 * y.std(unbiased=False) * len(y) ** (-0.2))


def kappa_from_gaps(labels: torch.Tensor, multiple: float) -> float:
    """kappa = ``multiple`` x the largest gap between sorted distinct labels (CcGAN's default rule)."""
    u = torch.unique(labels.double().flatten())
    if len(u) < 2:
        raise UserError("a regression GAN needs at least two distinct training labels; "
                        f"got {len(u)}")
    return float(multiple * (u[1:] - u[:-1]).max())


def soft_weights(labels: torch.Tensor, target: torch.Tensor, nu: float) -> torch.Tensor:
    """SVDL weights exp(-nu (y - target)^2), elementwise (CcGAN eq. 7)."""
    return torch.exp(-nu * (labels.double() - target.double()) ** 2).float()


def vicinity_radius(kind: str, kappa: float) -> float:
    """Largest |y - target| of a real label that can be drawn: kappa (hard) or where the soft
    weight with nu = 1/kappa^2 reaches ``SOFT_THRESHOLD``."""
    if kind == "hard":
        return kappa
    return kappa * math.sqrt(-math.log(SOFT_THRESHOLD))


@dataclass
class VicinalBatch:
    """One discriminator batch: normalised targets, chosen real rows, fake labels and weights."""

    target: torch.Tensor
    real_index: torch.Tensor
    fake_labels: torch.Tensor
    w_real: torch.Tensor
    w_fake: torch.Tensor


def sample_vicinal_batch(labels: torch.Tensor, batch_size: int, kind: str, kappa: float,
                         sigma: float, gen: torch.Generator) -> VicinalBatch:
    """Draw a vicinal batch from the normalised real ``labels`` (N,) with CPU generator ``gen``.

    A noisy target outside [0, 1] or with an empty vicinity falls back to its un-noised y_j,
    which always has itself in its vicinity.
    """
    labels = labels.float().flatten()
    distinct = torch.unique(labels)
    y = distinct[torch.randint(len(distinct), (batch_size,), generator=gen)]
    target = y + sigma * torch.randn(batch_size, generator=gen)
    radius = vicinity_radius(kind, kappa)
    inside = (labels[None, :] - target[:, None]).abs() <= radius
    ok = inside.any(1) & (target >= 0) & (target <= 1)
    target = torch.where(ok, target, y)
    inside = (labels[None, :] - target[:, None]).abs() <= radius
    scores = torch.rand(inside.shape, generator=gen).masked_fill(~inside, -1.0)
    real_index = scores.argmax(1)
    fake = (target + kappa * (2 * torch.rand(batch_size, generator=gen) - 1)).clamp(0, 1)
    if kind == "hard":
        ones = torch.ones(batch_size)
        return VicinalBatch(target, real_index, fake, ones, ones.clone())
    nu = 1.0 / kappa ** 2
    return VicinalBatch(target, real_index, fake, soft_weights(labels[real_index], target, nu),
                        soft_weights(fake, target, nu))
