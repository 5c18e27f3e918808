"""Joint geometric augmentation of image, mask, cached saliency and video, on whole batches
(DESIGN sections 3.1 and 8).

A cached teacher saliency map must move with its image. :class:`JointAugment` attaches the cached
maps to each sample; the engine then calls its :meth:`JointAugment.augment_batch` on every batch,
after moving it to the training device, and :class:`BatchAugment` crops and flips the image, every
spatial map and every video frame of a sample with the same random parameters, all samples at
once. The distribution is torchvision's ``v2.RandomCrop(size, padding, fill=0)`` followed by
``v2.RandomHorizontalFlip(p)`` applied per sample: the crop offsets are uniform over the padded
image (independently per axis and per sample), the flip is a Bernoulli(p) draw, padding is 0 for
images and maps alike, values are moved, never interpolated, and dtypes are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from xkd.config import AugmentConfig
from xkd.data.base import Sample

SPATIAL_KEYS = ("mask", "saliency")
"""Sample keys that are (1,H,W) maps aligned with the image (extras are spatial too)."""
VIDEO_KEY = "video"
"""A (C,T,H,W) clip: every frame gets its sample's crop and flip."""


@dataclass(frozen=True)
class BatchAugment:
    """Random crop of ``size`` from the image zero-padded by ``padding``, then a horizontal flip
    with probability ``p`` (``hflip``), drawn per sample and applied to whole batches."""

    size: int
    padding: int = 0
    hflip: bool = True
    p: float = 0.5

    def draw(self, n: int, h: int, w: int, device: torch.device | str = "cpu",
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample ``(top, left, flip)``: crop offsets in the padded image and flip flags."""
        hp, wp = h + 2 * self.padding, w + 2 * self.padding
        if hp < self.size or wp < self.size:
            raise ValueError(f"crop size {self.size} exceeds the padded image {hp}x{wp}")
        kw: dict[str, Any] = {"device": device, "generator": generator}
        top = torch.randint(0, hp - self.size + 1, (n,), **kw)
        left = torch.randint(0, wp - self.size + 1, (n,), **kw)
        flip = (torch.rand(n, **kw) < self.p) if self.hflip else torch.zeros(n, dtype=torch.bool, device=device)
        return top, left, flip

    def apply(self, t: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
        """Crop (and flip) ``t`` (N, ..., H, W) per sample; pixels from the padding are 0."""
        n, (h, w) = t.shape[0], t.shape[-2:]
        flat = t.reshape(n, -1, h, w)
        ar = torch.arange(self.size, device=t.device)
        rows = top.to(t.device)[:, None] - self.padding + ar
        cols = left.to(t.device)[:, None] - self.padding + ar
        cols = torch.where(flip.to(t.device)[:, None], cols.flip(1), cols)  # crop, then mirror
        r_ok, c_ok = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
        ri = rows.clamp(0, h - 1)[:, None, :, None].expand(n, flat.shape[1], self.size, w)
        ci = cols.clamp(0, w - 1)[:, None, None, :].expand(n, flat.shape[1], self.size, self.size)
        out = flat.gather(2, ri).gather(3, ci)
        ok = (r_ok[:, :, None] & c_ok[:, None, :])[:, None]
        out = torch.where(ok, out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out.reshape(*t.shape[:-2], self.size, self.size)

    def __call__(self, batch: Mapping[str, Any], keys: Iterable[str] = ("image", *SPATIAL_KEYS),
                 generator: torch.Generator | None = None) -> dict[str, Any]:
        """``batch`` with ``keys`` (present ones, (N,...,H,W)) and ``video`` (N,C,T,H,W) jointly
        cropped and flipped; other entries pass untouched."""
        names = [k for k in dict.fromkeys([*keys, VIDEO_KEY]) if torch.is_tensor(batch.get(k))]
        out = dict(batch)
        if not names:
            return out
        ref = batch[names[0]]
        for k in names:
            if batch[k].shape[0] != ref.shape[0] or batch[k].shape[-2:] != ref.shape[-2:]:
                raise ValueError(f"'{k}' {tuple(batch[k].shape)} does not match '{names[0]}' "
                                 f"{tuple(ref.shape)} in batch and spatial size")
        top, left, flip = self.draw(ref.shape[0], ref.shape[-2], ref.shape[-1], ref.device, generator)
        for k in names:
            out[k] = self.apply(batch[k], top, left, flip)
        return out


def build_train_transform(aug: AugmentConfig, image_size: int, hflip_ok: bool = True) -> BatchAugment | None:
    """Random crop (``crop_padding`` zero padding, fill 0 in normalised space) and horizontal
    flip; ``hflip_ok=False`` for datasets whose label a mirror changes (digits, angles).
    Returns None when nothing is enabled."""
    hflip = bool(aug.hflip and hflip_ok)
    if aug.crop_padding <= 0 and not hflip:
        return None
    return BatchAugment(size=image_size, padding=max(0, aug.crop_padding), hflip=hflip)


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


class JointAugment(Dataset):
    """Wraps a dataset: attaches ``extras[key][sample["index"]]`` (e.g. a cached (1,H,W)
    saliency map, returned as float32) to each sample. ``transform`` (a :class:`BatchAugment`) is
    applied per batch by :meth:`augment_batch`, which the engine calls on the training device, to
    the image, the masks, the extras and a ``video`` clip together; ``label``, ``index``,
    ``audio`` and other keys pass untouched.

    ``extras`` values may be tensors, numpy (memory-mapped) arrays or any object indexable by the
    sample index.
    """

    def __init__(self, dataset: Dataset, transform: BatchAugment | None = None,
                 extras: Mapping[str, Any] | None = None) -> None:
        if transform is not None and not isinstance(transform, BatchAugment):
            raise TypeError(f"JointAugment applies a BatchAugment per batch; got {type(transform).__name__} "
                            "(build one with xkd.data.build_train_transform)")
        self.dataset = dataset
        self.transform = transform
        self.extras = dict(extras or {})

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Sample:
        sample = dict(self.dataset[i])
        idx = int(sample["index"]) if "index" in sample else int(i)
        for key, source in self.extras.items():
            m = _as_tensor(source[idx]).float()
            sample[key] = m[None] if m.dim() == 2 else m
        return sample

    def augment_batch(self, batch: Mapping[str, Any],
                      generator: torch.Generator | None = None) -> dict[str, Any]:
        """The collated ``batch`` jointly augmented on its device (unchanged without transform)."""
        if self.transform is None:
            return dict(batch)
        return self.transform(batch, ("image", *SPATIAL_KEYS, *self.extras), generator)

    def augmented(self, i: int, generator: torch.Generator | None = None) -> Sample:
        """Sample ``i`` augmented as in a batch (a batch of one; for inspection and tests)."""
        batch = self.augment_batch(default_collate([self[i]]), generator)
        return {k: v[0] if torch.is_tensor(v) else v for k, v in batch.items()}
