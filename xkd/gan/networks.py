"""Conditional generator and projection discriminator (cGAN-KD section 5.2, CPU-sized).

Classification: a DCGAN-style generator with conditional batch norm driven by a class embedding
(de Vries et al. 2017; Miyato & Koyama 2018) and a projection discriminator
D(x, y) = w^T phi(x) + <e(y), phi(x)> (Miyato & Koyama 2018, eq. 3).
Regression (CcGAN, Ding et al. 2021): the same networks with the embedding of the *normalised*
continuous label y in [0, 1] (an MLP ``LabelEmbed``) in place of the class embedding. Both modules
normalise raw labels with the buffers ``label_lo``/``label_hi`` (the train labels' range), so
callers pass labels in the dataset's own units. Images are produced in the dataset's normalised
space (no output squashing).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class LabelEmbed(nn.Module):
    """Class embedding (classification) or MLP embedding of a normalised scalar label (regression)."""

    def __init__(self, task: str, num_classes: int, dim: int, lo: float = 0.0, hi: float = 1.0) -> None:
        super().__init__()
        self.task = task
        if task == "classification":
            self.net: nn.Module = nn.Embedding(num_classes, dim)
        else:
            self.net = nn.Sequential(nn.Linear(1, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU(),
                                     nn.Linear(dim, dim))
        self.register_buffer("label_lo", torch.tensor(float(lo)))
        self.register_buffer("label_hi", torch.tensor(float(hi)))

    def normalise(self, y: torch.Tensor) -> torch.Tensor:
        """Raw labels -> [0, 1] by the train range (min-max, as in the reference)."""
        return (y.float() - self.label_lo) / (self.label_hi - self.label_lo).clamp_min(1e-12)

    def forward(self, y: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        if self.task == "classification":
            return self.net(y.long())
        t = y.float() if normalised else self.normalise(y)
        return self.net(t.view(-1, 1))


class CondBatchNorm(nn.Module):
    """BatchNorm without affine parameters, then gamma(e) * x + beta(e) from the label embedding."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(embed_dim, channels)
        self.bias = nn.Linear(embed_dim, channels)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.gain.bias)
        nn.init.zeros_(self.bias.weight)
        nn.init.zeros_(self.bias.bias)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        g = 1 + self.gain(e)[:, :, None, None]
        return self.bn(x) * g + self.bias(e)[:, :, None, None]


class UpBlock(nn.Module):
    """CBN -> ReLU -> nearest x2 upsampling -> 3x3 conv."""

    def __init__(self, cin: int, cout: int, embed_dim: int) -> None:
        super().__init__()
        self.cbn = CondBatchNorm(cin, embed_dim)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(F.relu(self.cbn(x, e)), scale_factor=2, mode="nearest"))


class Generator(nn.Module):
    """G(z, y): e(y) ++ z -> (4g, s/8, s/8) -> three up-blocks (2g, g, g/2 channels) -> CBN/ReLU ->
    3x3 conv to C channels (cropped to s when s is not a multiple of 8). Every conditional BN is
    driven by e(y) ++ z (BigGAN's shared embedding with the latent, Brock et al. 2019, section 3).

    ``arch`` (plain types) rebuilds the module: ``Generator(**arch)``.
    """

    def __init__(self, task: str, num_classes: int, image_size: int, channels: int, z_dim: int,
                 g_channels: int, embed_dim: int, label_lo: float = 0.0, label_hi: float = 1.0) -> None:
        super().__init__()
        self.arch: dict[str, Any] = dict(task=task, num_classes=num_classes, image_size=image_size,
                                         channels=channels, z_dim=z_dim, g_channels=g_channels,
                                         embed_dim=embed_dim, label_lo=float(label_lo),
                                         label_hi=float(label_hi))
        self.task, self.z_dim, self.image_size = task, z_dim, image_size
        self.start = max(1, -(-image_size // 8))
        g = g_channels
        widths = [4 * g, 2 * g, g, max(4, g // 2)]
        self.embed = LabelEmbed(task, num_classes, embed_dim, label_lo, label_hi)
        self.fc = nn.Linear(z_dim + embed_dim, widths[0] * self.start ** 2)
        cond = embed_dim + z_dim
        self.blocks = nn.ModuleList([UpBlock(a, b, cond) for a, b in zip(widths, widths[1:])])
        self.out_bn = CondBatchNorm(widths[-1], cond)
        self.out = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        e = torch.cat([self.embed(y, normalised), z], 1)
        x = self.fc(e).view(len(z), -1, self.start, self.start)
        for block in self.blocks:
            x = block(x, e)
        x = self.out(F.relu(self.out_bn(x, e)))
        if x.shape[-1] != self.image_size:
            x = x[..., : self.image_size, : self.image_size]
        return x


def minibatch_std(h: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """(B,1,H,W) channel: the mean over features of the standard deviation across the batch, or,
    given class ids ``groups``, across the samples of each sample's own class (0 for a class seen
    once). The per-class form lets a conditional D see a class that collapsed to one image."""
    f = h.flatten(1)
    if groups is None:
        std = (f.var(dim=0, unbiased=False) + 1e-8).sqrt().mean() if len(f) > 1 else f.new_zeros(())
        return std.expand(len(h), 1, h.shape[2], h.shape[3])
    onehot = F.one_hot(groups.long()).to(f.dtype)  # (B, K)
    count = onehot.sum(0).clamp_min(1)[:, None]
    mean = onehot.t() @ f / count
    var = (onehot.t() @ (f * f) / count - mean ** 2).clamp_min(0)
    std = ((var + 1e-8).sqrt().mean(1) * (count.squeeze(1) > 1))[groups.long()]
    return std.view(-1, 1, 1, 1).expand(len(h), 1, h.shape[2], h.shape[3])


class Discriminator(nn.Module):
    """Projection discriminator with spectral norm (the SNGAN "standard CNN", smaller): three
    stages of a 4x4 stride-2 conv and a 3x3 conv (d, 2d, 4d channels), global sum pooling,
    D(x, y) = w^T phi(x) + <e(y), phi(x)> (Miyato & Koyama 2018, eq. 3). Before the last conv a
    minibatch-standard-deviation channel (Karras et al. 2018, section 3; per class for
    classification) lets D see a batch's diversity, which counters mode collapse."""

    def __init__(self, task: str, num_classes: int, channels: int, d_channels: int,
                 label_lo: float = 0.0, label_hi: float = 1.0) -> None:
        super().__init__()
        d = d_channels
        sn = spectral_norm
        self.features = nn.Sequential(
            sn(nn.Conv2d(channels, d, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(d, d, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(d, 2 * d, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * d, 2 * d, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(2 * d, 4 * d, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
        )
        self.last = nn.Sequential(sn(nn.Conv2d(4 * d + 1, 4 * d, 3, padding=1)), nn.LeakyReLU(0.2))
        self.linear = sn(nn.Linear(4 * d, 1))
        self.embed = LabelEmbed(task, num_classes, 4 * d, label_lo, label_hi)
        if task == "classification":
            self.embed.net = sn(self.embed.net)

    def forward(self, x: torch.Tensor, y: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        h = self.features(x)
        groups = y if self.embed.task == "classification" else None
        phi = self.last(torch.cat([h, minibatch_std(h, groups)], 1)).sum(dim=(2, 3))
        return self.linear(phi).squeeze(1) + (self.embed(y, normalised) * phi).sum(1)
