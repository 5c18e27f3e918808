"""FFSD building blocks (Li et al., "Distilling a Powerful Student Model via Online Knowledge
Distillation", IEEE TNNLS 2022, arXiv 2103.14473; reference notes section 2).

* :func:`attention`: a(F) = mean over channels of F², (B,1,H,W)                      (notes 2.2)
* :func:`attention_distance`: D(P, Q) = mean((N(P) − N(Q))²), N = per-sample L2 normalisation of
  all non-batch dimensions, the mean over B × length                                  (notes 2.2)
* :func:`diversity_target`, :func:`diversity_loss`, :func:`shifted_feature`: the "attention
  shift" target of common student k built from student k−1's last-stage attention     (notes 2.4)
* :func:`warmup_weight`: λ(e) = λ·exp(−5(1 − e/W)²) for 1-indexed epochs e ≤ W, else λ (W = 5)
* :class:`FusionModule` Φ, :class:`TransFusion` Ψ and :class:`SelfDistillationModule` G (notes 2.3)

Modules are sized from dry runs (:func:`xkd.models.base.describe`), so any student with spatial
stages works. G generalises the CIFAR design (transposed 3×3 conv, stride 2, halving channels):
block j maps stage j+1's channels/size to stage j's, with stride round(H_j / H_{j+1}) and a
bilinear resize where the transposed conv cannot hit the size exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xkd.models.base import StageInfo
from xkd.models.cifar_resnet import init_weights  # Kaiming fan-out convs, BN 1/0 (notes 2.3)


def attention(f: torch.Tensor) -> torch.Tensor:
    """a(F) = mean_c F², shape (B,1,H,W), computed in float32."""
    return f.float().pow(2).mean(dim=1, keepdim=True)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float().flatten(1), dim=1)


def attention_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """D(P, Q) = mean((N(P) − N(Q))²) over the batch and the flattened length."""
    return (_unit(p) - _unit(q)).pow(2).mean()


def diversity_target(prev_att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Target t, unit map ŷ and raw norm n (B,1) from the previous student's attention (B,1,H,W).

    ŷ = y/‖y‖; τ = the ⌊HW/3⌋-th smallest value of ŷ (at least the smallest); t = ŷ where ŷ < τ,
    n − ŷ where ŷ > τ and n/2 where ŷ = τ (the unit map is compared with a target on the raw-norm
    scale, exactly as in the official code, which is why λ_div is tiny).
    """
    y = prev_att.detach().float().flatten(1)
    n = y.norm(dim=1, keepdim=True)
    yhat = F.normalize(y, dim=1)
    k = max(1, y.shape[1] // 3)
    tau = yhat.kthvalue(k, dim=1, keepdim=True).values
    t = torch.where(yhat < tau, yhat, torch.where(yhat > tau, n - yhat, n / 2))
    return t, yhat, n


def diversity_loss(att: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_div = mean_p (N(a(F_k))_p − t_p)²."""
    return (_unit(att) - target).pow(2).mean()


def shifted_feature(prev: torch.Tensor, target: torch.Tensor, yhat: torch.Tensor,
                    n: torch.Tensor) -> torch.Tensor:
    """The previous student's last map with (t − ŷ)·n / C added to every channel at each pixel."""
    b, c, h, w = prev.shape
    return prev.detach().float() + ((target - yhat) * n / c).view(b, 1, h, w)


def warmup_weight(lam: float, epoch1: int | float, warmup_epochs: int = 5) -> float:
    """λ·exp(−5(1 − e/W)²) for e ≤ W (1-indexed epoch e), λ afterwards; W = 0 switches it off."""
    if warmup_epochs <= 0 or epoch1 > warmup_epochs:
        return float(lam)
    return float(lam) * math.exp(-5.0 * (1.0 - float(epoch1) / warmup_epochs) ** 2)


def _dw_pw(c_in: int, c_out: int) -> nn.Sequential:
    """Depthwise 3×3 (groups = c_in) + BN + ReLU, then pointwise 1×1 (c_in → c_out) + BN + ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                         nn.ReLU(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class FusionModule(nn.Module):
    """Φ: fuses m detached last-stage maps (B, m·C, H, W) into F_fuse (B,C,H,W) plus logits z_f."""

    def __init__(self, channels: int, num_common: int, num_classes: int) -> None:
        super().__init__()
        self.fuse = _dw_pw(num_common * channels, channels)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fused = self.fuse(x)
        return fused, self.fc(fused.mean(dim=(2, 3)))


class TransFusion(nn.Module):
    """Ψ on the leader's last map: depthwise 3×3 + BN + ReLU, 1×1 (C → m·C) + BN + ReLU."""

    def __init__(self, channels: int, num_common: int) -> None:
        super().__init__()
        self.body = _dw_pw(channels, num_common * channels)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _UpBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, size_in: tuple[int, int], size_out: tuple[int, int]) -> None:
        super().__init__()
        stride = max(1, round(size_out[0] / max(size_in[0], 1)))
        self.size_out = tuple(size_out)
        self.body = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 3, stride=stride, padding=1, output_padding=stride - 1,
                               bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if tuple(y.shape[-2:]) != self.size_out:
            y = F.interpolate(y, size=self.size_out, mode="bilinear", align_corners=False)
        return y


class SelfDistillationModule(nn.Module):
    """G: J−1 transposed-conv blocks deep → shallow; ``forward`` returns [G⁽¹⁾ … G⁽ᴶ⁻¹⁾]
    (shallow → deep, aligned with the owner's stages 1 … J−1) from a last-stage map."""

    def __init__(self, stages: list[StageInfo]) -> None:
        super().__init__()
        sizes = [(s.height, s.width) for s in stages]
        self.blocks = nn.ModuleList(
            _UpBlock(stages[j + 1].channels, stages[j].channels, sizes[j + 1], sizes[j])
            for j in reversed(range(len(stages) - 1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs[::-1]
