"""Class-shaded corner patches for ``digits`` (Decoy-MNIST, Ross, Hughes, Doshi-Velez, "Right for
the Right Reasons", IJCAI 2017, section 4.1).

Each training image gets, with probability ``probability``, a ``size``×``size`` patch whose shade
encodes the label: grey level 255 − 25·k for class k on one channel (the paper's shades), or
colour k of :data:`COLOURS` on three. ``position: corner`` (the paper's) puts it in a random corner
and the digit in the inner (S − 2·size) square; ``position: random`` puts it anywhere at least
:data:`MARGIN` pixels from the ink (``xkd.data.placement``), so with a moving digit a teacher map
of another image points elsewhere. Either way a patch never touches the ink (nor its mask). The
shuffled test set paints, on every image, the patch of a random *other* class. Draws come from
their own seeded stream per split.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from xkd.config import Strict
from xkd.data.placement import corner_positions, free_positions, paint_squares
from xkd.data.tensors import chunk_rng

COLOURS = (
    (255, 0, 0), (0, 255, 0), (0, 80, 255), (255, 255, 0), (255, 0, 255),
    (0, 255, 255), (255, 255, 255), (255, 128, 0), (128, 0, 255), (128, 128, 128),
)
"""RGB patch colour of digit k (three-channel images)."""
MARGIN = 1
"""Pixels kept between a ``position: random`` patch and the digit's ink."""


class DigitDecoyParams(Strict):
    """A class-shaded corner patch (a shortcut) in the training data of ``digits``."""

    probability: float = Field(1.0, ge=0, le=1, description="chance a training image has its class patch")
    size: int = Field(4, ge=1, description="patch side in pixels (at most image_size // 4)")
    apply_to: Literal["train", "train_val"] = Field(
        "train_val", description="splits with correlated patches; test is always clean")
    position: Literal["corner", "random"] = Field(
        "corner", description="corner: a random corner, the digit in the inner square (Ross et al.); "
        "random: anywhere clear of the ink")


def shade(k: torch.Tensor, channels: int) -> torch.Tensor:
    """(n, channels) uint8 patch colour of classes ``k``."""
    if channels == 1:
        return (255 - 25 * k).clamp(0, 255).to(torch.uint8)[:, None]
    return torch.tensor(COLOURS, dtype=torch.uint8)[k]


def patch_classes(labels: torch.Tensor, masks: torch.Tensor, d: DigitDecoyParams, seed: int,
                  split: str, shuffled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patch class per image, -1 = none; top-left row; top-left col): the label with
    probability p, or always another class when ``shuffled``; ``masks`` (N,1,S,S) are the ink."""
    rng = chunk_rng(seed, f"digits-decoy-{split}", 1, 0)
    n = len(labels)
    present = torch.from_numpy(rng.random(n) < d.probability)
    shift = torch.from_numpy(rng.integers(1, 10, n))
    corner = torch.from_numpy(rng.integers(0, 4, n).astype(np.int64))
    cls = (labels + shift) % 10 if shuffled else torch.where(present, labels, torch.full_like(labels, -1))
    if d.position == "corner":
        rows, cols = corner_positions(corner, d.size, masks.shape[-1])
    else:
        rows, cols = free_positions(masks, d.size, MARGIN, rng)
    return cls, rows, cols


def add_patches(images: torch.Tensor, cls: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                d: DigitDecoyParams) -> torch.Tensor:
    """Paint patch ``cls[i]`` (skipped where < 0) with its top-left at (rows[i], cols[i]) into
    uint8 image i (N,C,S,S)."""
    colour = shade(cls.clamp_min(0), images.shape[1])
    return paint_squares(images, rows, cols, d.size, colour, cls >= 0)
