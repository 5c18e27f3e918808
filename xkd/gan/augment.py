"""Differentiable augmentation of D's inputs (DiffAugment, Zhao et al., NeurIPS 2020, section 3):
colour (brightness, saturation, contrast) and translation by up to 1/8 of the image with fill 0
(the dataset mean in normalised space). Real and fake images get the same *kind* of random
transform; gradients flow through to G. Randomness comes from a CPU ``torch.Generator`` so a
seeded run (and its resume) is reproducible on any device.
"""

from __future__ import annotations

import torch


def _rand(gen: torch.Generator, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, generator=gen).to(like.device, like.dtype)


def colour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per image."""
    n = len(x)
    x = x + (_rand(gen, n, x) - 0.5)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (_rand(gen, n, x) * 2) + m
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - m) * (_rand(gen, n, x) + 0.5) + m


def translate(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by integer offsets in [-ratio*H, ratio*H] (x and y), zero-filled."""
    n, _, h, w = x.shape
    py, px = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    ty = torch.randint(-py, py + 1, (n, 1), generator=gen).to(x.device)
    tx = torch.randint(-px, px + 1, (n, 1), generator=gen).to(x.device)
    iy = torch.arange(h, device=x.device)[None, :] + py - ty
    ix = torch.arange(w, device=x.device)[None, :] + px - tx
    xp = torch.nn.functional.pad(x, (px, px, py, py))
    b = torch.arange(n, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[b, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)


def diff_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Colour then translation (the DiffAugment policy 'color,translation')."""
    return translate(colour(x, gen), gen)
