"""In-memory splits for generated datasets, and per-chunk seeding.

Generated datasets (``shapes``, ``digits``) hold a whole split as uint8 tensors (4x smaller than
float32) and normalise one sample at a time. Randomness is drawn in fixed-size chunks, each from a
generator seeded by ``(seed, split, stream, chunk)``, so sample ``i`` depends only on the seed, the
split, the generation params and ``i``, not on how many samples the split holds. Chunks are
rendered together in blocks (few large array operations, bounded memory).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from xkd.data.base import Sample

CHUNK = 256
"""Samples drawn per generator; fixed so that a sample never depends on the split size."""

_SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
_BLOCK_PIXELS = 1 << 19
"""Samples x pixels rendered per block: few large tensor ops (robust on busy CPUs), bounded memory."""


def chunk_blocks(n: int, image_size: int) -> list[range]:
    """The chunks covering ``n`` samples, grouped into blocks rendered together."""
    per = max(1, _BLOCK_PIXELS // (CHUNK * image_size * image_size))
    total = -(-n // CHUNK)
    return [range(b, min(b + per, total)) for b in range(0, total, per)]


def chunk_rng(seed: int, split: str, stream: int, chunk: int) -> np.random.Generator:
    """A numpy generator (PCG64) seeded from (seed, split, stream, chunk) via SeedSequence."""
    code = _SPLIT_CODES.get(split, sum(map(ord, split)) + 100)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % (1 << 63), code, stream, chunk])))


class TensorSplit(Dataset):
    """A split stored as uint8 tensors: ``images`` (N,C,H,W) in 0..255, ``labels`` (N,),
    optional ``masks`` (N,1,H,W) in {0,1}. ``__getitem__`` returns the normalised sample dict."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        masks: torch.Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 (N,C,H,W) tensor")
        if len(labels) != len(images) or (masks is not None and len(masks) != len(images)):
            raise ValueError("images, labels and masks must have the same length")
        self.images = images.contiguous()
        self.labels = labels.contiguous()
        self.masks = None if masks is None else masks.to(torch.uint8).contiguous()
        c = images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 images (..., C, H, W) -> normalised float32."""
        return (images_u8.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, i: int) -> Sample:
        i = int(i)
        if i < 0:
            i += len(self)
        out: Sample = {
            "image": self.normalise(self.images[i]),
            "label": self.labels[i].clone(),
            "index": torch.tensor(i, dtype=torch.long),
        }
        if self.masks is not None:
            out["mask"] = self.masks[i].float()
        return out


def stratified_split(labels: torch.Tensor, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Seeded, stratified split of indices ``0..N-1`` into len(fractions)+1 sorted parts of sizes
    round(f * N) (the last part takes the rest).

    Each sample gets the key (rank within its class in a random order + U(0,1)) / class size; the
    parts are consecutive runs of the key order, so every class is spread evenly over the parts
    (up to one sample per class) while the part sizes are exact even for tiny datasets.
    """
    g = torch.Generator()
    g.manual_seed(seed % (1 << 63))
    n = len(labels)
    perm = torch.randperm(n, generator=g)
    _, cls = torch.unique(labels[perm], return_inverse=True)
    order = torch.argsort(cls, stable=True)
    counts = torch.bincount(cls)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.float64)
    rank[order] = (torch.arange(n) - starts[cls[order]]).double()
    key = (rank + torch.rand(n, generator=g, dtype=torch.float64)) / counts[cls].double()
    ranked = perm[torch.argsort(key, stable=True)]
    parts, start = [], 0
    for f in fractions:
        k = int(round(f * n))
        parts.append(ranked[start:start + k])
        start += k
    parts.append(ranked[start:])
    return [torch.sort(p).values for p in parts]
