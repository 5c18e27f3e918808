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

``GlobalRelation`` is FGD's global term (eqs. 8-9): each side's features pass a GcBlock,
R(F) = F + W_v2(ReLU(LN(W_v1(Σ_j softmax_j(W_k F)_j F_j)))), one trainable block per side as in
FGD, and L_global = mean over elements of (R(T) − R(U))². FGD sums over elements and divides by
the batch; the mean puts the term on HCL's scale (``fgd_global_weight`` absorbs the factor C·h·w).
"""

from __future__ import annotations

import torch
from torch import nn

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


class GcBlock(nn.Module):
    """Global context block (Cao et al., GCNet 2019; FGD eq. 9) with FGD's bottleneck ratio 1/2:
    softmax attention pooling over positions (W_k, a 1x1 conv to one channel), then
    W_v2 · ReLU · LayerNorm · W_v1 on the pooled vector, added to every position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = max(1, channels // 2)
        self.key = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(nn.Conv2d(channels, mid, kernel_size=1),
                                       nn.LayerNorm([mid, 1, 1]), nn.ReLU(inplace=True),
                                       nn.Conv2d(mid, channels, kernel_size=1))

    def context(self, f: torch.Tensor) -> torch.Tensor:
        """(B,C,1,1) = Σ_j softmax_j(W_k f)_j f_j."""
        b, c = f.shape[:2]
        weights = torch.softmax(self.key(f).flatten(1), dim=1)  # (B, h·w)
        return torch.einsum("bn,bcn->bc", weights, f.flatten(2)).view(b, c, 1, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f + self.transform(self.context(f))


class GlobalRelation(nn.Module):
    """FGD's global relation term over the spatial levels: a student and a teacher GcBlock per
    level (both trained, as in FGD); ``forward(outs, targets)`` = Σ_levels mean (R_t(T) − R_s(U))²."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.student = nn.ModuleList(GcBlock(c) for c in channels)
        self.teacher = nn.ModuleList(GcBlock(c) for c in channels)

    def forward(self, outs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        terms = [(gt(t.detach().float()) - gs(u.float())).pow(2).mean()
                 for u, t, gs, gt in zip(outs, targets, self.student, self.teacher)]
        return torch.stack(terms).sum()
