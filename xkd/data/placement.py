"""Where a decoy square goes: a fixed corner, or anywhere clear of the object (issue 15).

With the object at a random place and the decoy square at another random place, a teacher map
given to the wrong image points somewhere else in it, so the shuffled-map control separates
"where the teacher looks in this image" from the prior "centre, not corners" that every map of a
centred object shares. Used by ``digits`` (``decoy.position``) and ``shapes`` (``decoy.position``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def corner_positions(corner: torch.Tensor, side: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left (row, col) of a ``side`` square in corner 0-3 (top-left, top-right, bottom-left,
    bottom-right) of a ``size`` image."""
    far = size - side
    rows = torch.where(corner >= 2, far, 0)
    cols = torch.where(corner % 2 == 1, far, 0)
    return rows.long(), cols.long()


def free_positions(masks: torch.Tensor, side: int, margin: int, rng: np.random.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left (row, col) per image of a ``side`` square at least ``margin`` pixels from every
    object pixel of ``masks`` (N,1,S,S), uniform over the positions that allow it; where none does,
    uniform over the positions that overlap the object least. Vectorised (one max-pool)."""
    n, _, s, _ = masks.shape
    k = side + 2 * margin
    padded = F.pad(masks.float(), (margin,) * 4)
    overlap = F.avg_pool2d(padded, kernel_size=k, stride=1).flatten(1)  # (N, (S-side+1)^2)
    best = overlap <= overlap.min(dim=1, keepdim=True).values + 1e-9
    score = torch.from_numpy(rng.random(tuple(best.shape))).float() + best.float()
    flat = score.argmax(dim=1)
    width = s - side + 1
    return flat // width, flat % width


def paint_squares(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, side: int,
                  colours: torch.Tensor, paint: torch.Tensor) -> torch.Tensor:
    """Paint a ``side`` square of ``colours[i]`` (N,C) at (rows[i], cols[i]) into uint8 image i
    (N,C,S,S) where ``paint[i]``."""
    s = images.shape[-1]
    grid = torch.arange(s)
    in_r = (grid >= rows[:, None]) & (grid < rows[:, None] + side)
    in_c = (grid >= cols[:, None]) & (grid < cols[:, None] + side)
    where = in_r[:, :, None] & in_c[:, None, :] & paint[:, None, None]
    return torch.where(where[:, None], colours.to(images.dtype)[:, :, None, None], images)
