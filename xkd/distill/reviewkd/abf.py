"""ReviewKD's attention-based fusion (ABF) and the deep -> shallow review chain.

Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021 (reference notes
sections 1.2, 1.3, 1.6). One ABF per distilled level j:

1. lateral: 1×1 conv (in -> mid, no bias) + BatchNorm, no ReLU -> x;
2. fusion (every level but the deepest): the deeper residual R_{j+1} is upsampled to x's size with
   nearest-neighbour interpolation, [x, R↑] -> 1×1 conv (2·mid -> 2, with bias) -> sigmoid gives two
   independent maps a₁, a₂ (not normalised to sum 1); R_j = x ⊙ a₁ + R↑ ⊙ a₂;
3. if the teacher map is larger than the student map, R_j is nearest-upsampled to the teacher size
   before the output conv (and passed down in that size, as in the reference);
4. output: 3×3 conv (mid -> out, no bias) + BatchNorm, no ReLU -> U_j (teacher channels).

Both the lateral and the output convs use Kaiming-uniform with a = 1; the attention conv keeps
PyTorch's default initialisation.

xkd extension (documented, not in the reference): if the student map is *larger* than the
teacher's in some dimension, U_j is adaptive-average-pooled to the teacher size after the output
conv, and R_j keeps the student size (the next shallower level upsamples it anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ABF(nn.Module):
    """One attention-based fusion level (student channels ``in_ch`` -> teacher channels ``out_ch``)."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, fuse: bool,
                 out_size: tuple[int, int]) -> None:
        super().__init__()
        self.fuse = fuse
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.lateral = nn.Sequential(nn.Conv2d(in_ch, mid_ch, 1, bias=False), nn.BatchNorm2d(mid_ch))
        self.attention = (nn.Sequential(nn.Conv2d(2 * mid_ch, 2, 1, bias=True), nn.Sigmoid())
                          if fuse else None)
        self.output = nn.Sequential(nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_ch))
        nn.init.kaiming_uniform_(self.lateral[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns (U_j at the teacher size, R_j passed to the next shallower level, (B,2,h,w) or None)."""
        x = self.lateral(x)
        att = None
        if self.fuse:
            if residual is None:
                raise ValueError("a fusing ABF needs the residual of the deeper level")
            r = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            att = self.attention(torch.cat([x, r], dim=1))
            x = x * att[:, 0:1] + r * att[:, 1:2]
        h, w = x.shape[-2:]
        th, tw = self.out_size
        if (th, tw) != (h, w) and th >= h and tw >= w:
            x = F.interpolate(x, size=(th, tw), mode="nearest")
        out = self.output(x)
        if tuple(out.shape[-2:]) != self.out_size:
            out = F.adaptive_avg_pool2d(out, self.out_size)
        return out, x, att


class ReviewChain(nn.ModuleList):
    """The ABF chain (a ModuleList of :class:`ABF`) over levels listed shallow -> deep.

    The last level is the pooled vector (C×1×1). ``in_channels``/``out_channels``/``out_sizes`` are
    per level (student channels, teacher channels, teacher spatial size). The chain runs
    deep -> shallow starting at the pooled vector and returns the outputs shallow -> deep, aligned
    with the teacher list.
    """

    def __init__(self, in_channels: list[int], out_channels: list[int],
                 out_sizes: list[tuple[int, int]], mid_channels: int) -> None:
        n = len(in_channels)
        super().__init__(
            ABF(in_channels[i], mid_channels, out_channels[i], fuse=i < n - 1, out_size=out_sizes[i])
            for i in range(n))
        self.mid_channels = mid_channels

    def forward(self, feats: list[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Fused outputs U_j and attention maps (None at the deepest level), both shallow -> deep."""
        if len(feats) != len(self):
            raise ValueError(f"expected {len(self)} feature levels, got {len(feats)}")
        outs: list[torch.Tensor] = []
        atts: list[torch.Tensor | None] = []
        residual = None
        for abf, f in zip(reversed(self), reversed(feats)):
            out, residual, att = abf(f, residual)
            outs.insert(0, out)
            atts.insert(0, att)
        return outs, atts
