"""``digits``: scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes, no
download), bilinearly upsampled to ``image_size`` with ink masks from thresholding (DESIGN
section 4). The train/val/test split is stratified and seeded; ``train_fraction`` keeps a
stratified, seeded part of the training split (data-efficiency curves).

``decoy`` (Decoy-MNIST, Ross, Hughes, Doshi-Velez, "Right for the Right Reasons", IJCAI 2017): the
digit is drawn into the inner (S − 2·size) square and a size×size patch of its class's shade is
painted in a random corner (``xkd.data.digit_decoy``); test stays clean, and the extra test set
``test_decoy_shuffled`` has another class's patch on every test image."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from xkd.config import DataConfig, Strict
from xkd.data.base import DATASETS, DataBundle
from xkd.data.digit_decoy import DigitDecoyParams, add_patches, patch_classes
from xkd.data.tensors import TensorSplit, stratified_split
from xkd.data.transforms import build_train_transform


class DigitsParams(Strict):
    """Parameters of the ``digits`` dataset."""

    image_size: int = Field(32, ge=8, le=256)
    channels: Literal[1, 3] = Field(1, description="3 repeats the grey channel (for RGB backbones)")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    mask_threshold: float = Field(0.35, gt=0, lt=1, description="ink mask: upsampled intensity above this")
    train_fraction: float = Field(1.0, gt=0, le=1, description="stratified part of the train split kept")
    decoy: DigitDecoyParams | None = None

    @model_validator(mode="after")
    def _fractions(self) -> "DigitsParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must be < 0.9")
        if self.decoy is not None and self.decoy.size > self.image_size // 4:
            raise ValueError(f"decoy.size {self.decoy.size} must be <= image_size // 4 = {self.image_size // 4}")
        return self


def load_images(image_size: int, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,1,S,S) float images in [0,1] and (N,) long labels of the whole digits set; with ``pad``
    the digit fills the inner (S − 2·pad) square and the border is 0."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    inner = image_size - 2 * pad
    x = F.interpolate(x, size=(inner, inner), mode="bilinear", align_corners=False)
    x = F.pad(x, (pad, pad, pad, pad))
    return x.clamp(0, 1), torch.tensor(d.target, dtype=torch.long)


@DATASETS.register("digits", params=DigitsParams)
def digits(params: DigitsParams, cfg: DataConfig, seed: int) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits, upsampled, with ink masks."""
    d = params.decoy
    x, y = load_images(params.image_size, 0 if d is None else d.size)
    masks = (x > params.mask_threshold).to(torch.uint8)
    mean, std = float(x.mean()), float(x.std())
    images = (x * 255).round().to(torch.uint8).repeat(1, params.channels, 1, 1)
    c = params.channels
    val, test, train = stratified_split(y, [params.val_fraction, params.test_fraction], seed)
    if params.train_fraction < 1:
        train = train[stratified_split(y[train], [params.train_fraction], seed + 1)[0]]

    def split(idx: torch.Tensor, name: str, decoy: bool = False, shuffled: bool = False) -> TensorSplit:
        imgs = images[idx]
        if d is not None and (decoy or shuffled):
            imgs = add_patches(imgs, *patch_classes(y[idx], d, seed, name, shuffled), d)
        return TensorSplit(imgs, y[idx], (mean,) * c, (std,) * c, masks[idx])

    extra = {} if d is None else {"test_decoy_shuffled": split(test, "test", shuffled=True)}
    return DataBundle(
        name="digits", train=split(train, "train", True),
        val=split(val, "val", d is not None and d.apply_to == "train_val"),
        test=split(test, "test"), num_classes=10, extra_tests=extra,
        has_masks=True, in_channels=c, image_size=params.image_size, mean=(mean,) * c,
        std=(std,) * c, train_transform=build_train_transform(cfg.augment, params.image_size, hflip_ok=False),
        class_names=[str(i) for i in range(10)],
    )
