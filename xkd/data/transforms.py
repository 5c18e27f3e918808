"""Joint geometric augmentation of image, mask and cached saliency (DESIGN section 3.1).

A cached teacher saliency map must move with its image: random crops and flips are applied to the
image (``tv_tensors.Image``) and to every spatial map (``tv_tensors.Mask``: same geometry, no
interpolation of values, dtype kept, so a float saliency stays float) in one call of a
``torchvision.transforms.v2`` transform, which draws its random parameters once per call.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from xkd.config import AugmentConfig
from xkd.data.base import Sample

SPATIAL_KEYS = ("mask", "saliency")
"""Sample keys that are (1,H,W) maps aligned with the image (extras are spatial too)."""


def build_train_transform(aug: AugmentConfig, image_size: int, hflip_ok: bool = True) -> v2.Compose | None:
    """Random crop (``crop_padding`` zero padding, fill 0 in normalised space) and horizontal
    flip; ``hflip_ok=False`` for datasets whose label a mirror changes (digits, angles).
    Returns None when nothing is enabled."""
    ops: list[Any] = []
    if aug.crop_padding > 0:
        ops.append(v2.RandomCrop(image_size, padding=aug.crop_padding, fill=0, padding_mode="constant"))
    if aug.hflip and hflip_ok:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops) if ops else None


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(np.asarray(x))


class JointAugment(Dataset):
    """Wraps a dataset: attaches ``extras[key][sample["index"]]`` (e.g. a cached (1,H,W)
    saliency map) to each sample, then applies ``transform`` jointly to the image, all spatial
    maps and a ``video`` clip (C,T,H,W; every frame gets the image's crop and flip). Returns a
    plain dict of tensors; ``label``, ``index``, ``audio`` and other keys pass untouched.

    ``extras`` values may be tensors, numpy (memory-mapped) arrays or any object indexable by the
    sample index; maps are returned as float32.
    """

    def __init__(self, dataset: Dataset, transform: Any = None,
                 extras: Mapping[str, Any] | None = None) -> None:
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
        if self.transform is None:
            return sample
        spatial = [k for k in sample if k in SPATIAL_KEYS or k in self.extras]
        packed: dict[str, Any] = {"image": tv_tensors.Image(sample["image"])}
        packed.update({k: tv_tensors.Mask(sample[k]) for k in spatial})
        if "video" in sample:  # (C,T,H,W) clip: the same crop/flip on every frame (tv_tensors: T,C,H,W)
            packed["video"] = tv_tensors.Video(sample["video"].transpose(0, 1))
        out = self.transform(packed)
        for k, v in out.items():
            v = v.as_subclass(torch.Tensor)
            sample[k] = v.transpose(0, 1).contiguous() if k == "video" else v
        return sample
