"""``digits``: scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes, no
download), bilinearly upsampled to ``image_size`` with ink masks from thresholding (DESIGN
section 4). The train/val/test split is stratified and seeded."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from xkd.config import DataConfig, Strict
from xkd.data.base import DATASETS, DataBundle
from xkd.data.tensors import TensorSplit, stratified_split
from xkd.data.transforms import build_train_transform


class DigitsParams(Strict):
    """Parameters of the ``digits`` dataset."""

    image_size: int = Field(32, ge=8, le=256)
    channels: Literal[1, 3] = Field(1, description="3 repeats the grey channel (for RGB backbones)")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    mask_threshold: float = Field(0.35, gt=0, lt=1, description="ink mask: upsampled intensity above this")

    @model_validator(mode="after")
    def _fractions(self) -> "DigitsParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must be < 0.9")
        return self


def load_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,1,S,S) float images in [0,1] and (N,) long labels of the whole digits set."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1), torch.tensor(d.target, dtype=torch.long)


@DATASETS.register("digits", params=DigitsParams)
def digits(params: DigitsParams, cfg: DataConfig, seed: int) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits, upsampled, with ink masks."""
    x, y = load_images(params.image_size)
    masks = (x > params.mask_threshold).to(torch.uint8)
    mean, std = float(x.mean()), float(x.std())
    images = (x * 255).round().to(torch.uint8).repeat(1, params.channels, 1, 1)
    c = params.channels
    val, test, train = stratified_split(y, [params.val_fraction, params.test_fraction], seed)

    def split(idx: torch.Tensor) -> TensorSplit:
        return TensorSplit(images[idx], y[idx], (mean,) * c, (std,) * c, masks[idx])

    return DataBundle(
        name="digits", train=split(train), val=split(val), test=split(test), num_classes=10,
        has_masks=True, in_channels=c, image_size=params.image_size, mean=(mean,) * c,
        std=(std,) * c, train_transform=build_train_transform(cfg.augment, params.image_size, hflip_ok=False),
        class_names=[str(i) for i in range(10)],
    )
