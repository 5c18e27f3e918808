"""``digits``: scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes, no
download), bilinearly upsampled to ``image_size`` with ink masks from thresholding (DESIGN
section 4). The train/val/test split is stratified and seeded; ``train_fraction`` keeps a
stratified, seeded part of the training split (data-efficiency curves).

``digit_size`` draws the digit smaller than the image and ``digit_position: random`` moves it to
a seeded random place per image (the same for every student and the teacher of a seed).

``decoy`` (Decoy-MNIST, Ross, Hughes, Doshi-Velez, "Right for the Right Reasons", IJCAI 2017): a
size×size patch of the class's shade, in a random corner with the digit kept in the inner
(S − 2·size) square, or (``decoy.position: random``) anywhere clear of the ink
(``xkd.data.digit_decoy``); test stays clean, and the extra test set ``test_decoy_shuffled`` has
another class's patch on every test image."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from xkd.config import DataConfig, Strict
from xkd.data.base import DATASETS, DataBundle
from xkd.data.digit_decoy import MARGIN, DigitDecoyParams, add_patches, patch_classes
from xkd.data.tensors import TensorSplit, chunk_rng, stratified_split
from xkd.data.transforms import build_train_transform


class DigitsParams(Strict):
    """Parameters of the ``digits`` dataset."""

    image_size: int = Field(32, ge=8, le=256)
    channels: Literal[1, 3] = Field(1, description="3 repeats the grey channel (for RGB backbones)")
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    mask_threshold: float = Field(0.35, gt=0, lt=1, description="ink mask: upsampled intensity above this")
    train_fraction: float = Field(1.0, gt=0, le=1, description="stratified part of the train split kept")
    digit_size: int | None = Field(None, ge=4, description="side of the drawn digit; null = the "
                                   "whole image (the inner square with a corner decoy)")
    digit_position: Literal["centre", "random"] = Field(
        "centre", description="where a smaller digit sits: centred, or a seeded random place per image")
    decoy: DigitDecoyParams | None = None

    @model_validator(mode="after")
    def _fractions(self) -> "DigitsParams":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must be < 0.9")
        d, s = self.decoy, self.image_size
        if d is not None and d.size > s // 4:
            raise ValueError(f"decoy.size {d.size} must be <= image_size // 4 = {s // 4}")
        area, side = self.area()
        if side > area:
            raise ValueError(f"digit_size {side} must be <= {area} (the image, less 2 x decoy.size "
                             f"with a corner decoy)")
        if d is not None and d.position == "random" and s - side < 2 * (d.size + MARGIN):
            raise ValueError(f"decoy.position 'random' needs room beside the digit: digit_size "
                             f"must be <= image_size - 2 x (decoy.size + {MARGIN}) = "
                             f"{s - 2 * (d.size + MARGIN)}, got {side}")
        return self

    def area(self) -> tuple[int, int]:
        """(side of the square the digit may occupy, side of the digit)."""
        d = self.decoy
        area = self.image_size - (2 * d.size if d is not None and d.position == "corner" else 0)
        return area, self.digit_size or area


def load_images(image_size: int, pad: int = 0, digit_size: int | None = None,
                random_offsets: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,1,S,S) float images in [0,1] and (N,) long labels of the whole digits set. The digit,
    ``digit_size`` pixels (default S − 2·pad), lies in the inner (S − 2·pad) square: centred, or
    at a uniform random place per image drawn from ``random_offsets``; the rest is 0."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    inner = image_size - 2 * pad
    side = digit_size or inner
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
    n, room = len(x), inner - side
    if random_offsets is None:
        rows = cols = torch.full((n,), room // 2)
    else:
        rows, cols = (torch.from_numpy(random_offsets.integers(0, room + 1, n)) for _ in range(2))
    out = torch.zeros(n, 1, image_size, image_size)
    grid = torch.arange(side)
    r = (rows + pad)[:, None] + grid  # (N, side) row indices
    c = (cols + pad)[:, None] + grid
    out[torch.arange(n)[:, None, None], 0, r[:, :, None], c[:, None, :]] = x[:, 0]
    return out, torch.tensor(d.target, dtype=torch.long)


@DATASETS.register("digits", params=DigitsParams)
def digits(params: DigitsParams, cfg: DataConfig, seed: int) -> DataBundle:
    """scikit-learn's 8x8 handwritten digits, upsampled, with ink masks."""
    d = params.decoy
    area, side = params.area()
    moves = chunk_rng(seed, "digits-place", 2, 0) if params.digit_position == "random" else None
    x, y = load_images(params.image_size, (params.image_size - area) // 2, side, moves)
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
            imgs = add_patches(imgs, *patch_classes(y[idx], masks[idx], d, seed, name, shuffled), d)
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
