"""Foreground/background-decoupled HCL with the teacher's attention (FGD-style; issue 15).

After Focal and Global Distillation (Yang et al., CVPR 2022, eqs. 1-9), with the teacher's
saliency map in place of ground-truth boxes. For one level with student output U and teacher
map T (B,C,h,w) and the teacher's map M_j resized to h×w:

* foreground mask F = M_j / max_hw(M_j) in [0, 1] (soft; 1/2 everywhere for a degenerate map),
  background B = 1 − F;
* the teacher's spatial attention A^S = h·w·softmax_hw(mean_c |T| / τ) (mean 1) and channel
  attention A^C = C·softmax_c(mean_hw |T| / τ) (mean 1), FGD eqs. 2-3;
* L_fg = HCL_W(√A^C·U, √A^C·T) with W = F·A^S / mean_hw(F) (a mean over the foreground, FGD's
  scale mask), L_bg the same with B: the per-pixel error mean_c A^C_c (U_c − T_c)² is weighted by
  the region and A^S, and HCL's pooled terms pool U, T and W alike (``losses.weighted_hcl``);
* with attention off (A ≡ 1), mean(F)·L_fg + mean(B)·L_bg = HCL(U, T) per sample (tested).

``attention_loss`` is FGD's attention term (eq. 7): L1 between teacher and student spatial
attention plus L1 between their channel attention, the teacher's as the target.
"""

from __future__ import annotations

import torch

from xkd.distill.reviewkd.weights import EPS, degenerate, resize_map
from xkd.losses import weighted_hcl


def spatial_attention(f: torch.Tensor, temperature: float) -> torch.Tensor:
    """A^S (B,1,h,w) = h·w·softmax over positions of mean_c |f| / τ (mean 1 per sample)."""
    g = f.float().abs().mean(dim=1, keepdim=True)
    b, _, h, w = g.shape
    return (h * w) * torch.softmax(g.flatten(1) / temperature, dim=1).view(b, 1, h, w)


def channel_attention(f: torch.Tensor, temperature: float) -> torch.Tensor:
    """A^C (B,C,1,1) = C·softmax over channels of mean_hw |f| / τ (mean 1 per sample)."""
    g = f.float().abs().mean(dim=(2, 3))
    return f.shape[1] * torch.softmax(g / temperature, dim=1)[:, :, None, None]


def foreground(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Soft foreground F (B,1,h,w) = M_j / max(M_j); 1/2 where the map carries no information."""
    mj = resize_map(m.float().clamp_min(0), size)
    peak = mj.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    fg = mj / peak.clamp_min(EPS)
    flat = degenerate(mj).view(-1, 1, 1, 1) | (peak < EPS)
    return torch.where(flat, torch.full_like(fg, 0.5), fg)


def split_hcl(u: torch.Tensor, t: torch.Tensor, fg: torch.Tensor, temperature: float | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_fg, L_bg) of one level; ``temperature`` None = no teacher attention (A ≡ 1)."""
    t = t.detach().float()
    u = u.float()
    if temperature is None:
        a_s = torch.ones_like(fg)
    else:
        a_s = spatial_attention(t, temperature)
        root = channel_attention(t, temperature).sqrt()
        u, t = u * root, t * root
    terms = []
    for region in (fg, 1.0 - fg):
        w = region * a_s / region.mean(dim=(1, 2, 3), keepdim=True).clamp_min(EPS)
        terms.append(weighted_hcl(u, t, w))
    return terms[0], terms[1]


def attention_loss(u: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """FGD eq. 7: |A^S_T − A^S_U|₁ + |A^C_T − A^C_U|₁ (means over positions / channels and batch)."""
    t = t.detach()
    spatial = (spatial_attention(t, temperature) - spatial_attention(u, temperature)).abs().mean()
    channel = (channel_attention(t, temperature) - channel_attention(u, temperature)).abs().mean()
    return spatial + channel
