"""Batched joint augmentation (issue 17): torchvision's per-sample crop + flip distribution, image,
masks, saliency and video frames aligned, applied by the engine per batch on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from tests.test_engine_helpers import TinyDistiller, TinyNet, train_cfg
from xkd.config import AugmentConfig
from xkd.data import BatchAugment, JointAugment, build_train_transform
from xkd.engine import fit

S, P = 4, 2  # 4x4 images, 2 px padding: 5 x 5 crop offsets x 2 flips = 50 outcomes
BASE = (torch.arange(S * S, dtype=torch.float32) + 1).view(1, S, S)  # every pixel distinct


def outcomes() -> list[tuple[tuple[int, int, bool], torch.Tensor]]:
    """Every (top, left, flip) and the image torchvision's functional ops make from BASE."""
    padded = TF.pad(BASE, [P], fill=0)
    out = []
    for top in range(2 * P + 1):
        for left in range(2 * P + 1):
            crop = TF.crop(padded, top, left, S, S)
            out += [((top, left, False), crop), ((top, left, True), TF.horizontal_flip(crop))]
    return out


def classify(images: torch.Tensor) -> np.ndarray:
    """Index into outcomes() of each (N,1,S,S) image (every one must match exactly one)."""
    table = torch.stack([img for _, img in outcomes()]).view(len(outcomes()), -1)
    eq = (images.reshape(images.shape[0], 1, -1) == table[None]).all(-1)
    assert bool((eq.sum(1) == 1).all())
    return eq.float().argmax(1).numpy()


def test_batched_crop_and_flip_have_torchvisions_per_sample_distribution():
    aug = BatchAugment(size=S, padding=P, hflip=True)
    n = 20000
    g = torch.Generator().manual_seed(0)
    out = aug({"image": BASE.expand(n, 1, S, S)}, generator=g)["image"]
    counts = np.bincount(classify(out), minlength=50)
    # the 50 outcomes are equally likely (uniform offsets per axis, fair flip, independent)
    assert chisquare(counts).pvalue > 1e-3
    # and torchvision's own per-sample transform gives the same distribution
    ref = v2.Compose([v2.RandomCrop(S, padding=P, fill=0, padding_mode="constant"),
                      v2.RandomHorizontalFlip()])
    torch.manual_seed(1)
    tv = torch.stack([ref(BASE) for _ in range(5000)])
    tv_counts = np.bincount(classify(tv), minlength=50)
    assert chi2_contingency(np.stack([counts, tv_counts])).pvalue > 1e-3
    # the mapping (top, left, flip) -> image is torchvision's, parameter by parameter
    top, left, flip = aug.draw(3, S, S, generator=torch.Generator().manual_seed(5))
    got = aug.apply(BASE.expand(3, 1, S, S), top, left, flip)
    for i in range(3):
        want = dict((k, v) for k, v in outcomes())[(int(top[i]), int(left[i]), bool(flip[i]))]
        assert torch.equal(got[i], want)


def test_image_masks_saliency_and_video_move_together_and_keep_dtypes():
    n, h = 64, 16
    g = torch.Generator().manual_seed(2)
    img = torch.rand(n, 3, h, h, generator=g) + 0.5  # strictly positive: 0 only from padding
    batch = {"image": img, "mask": (img[:, :1] > 1.0),  # bool mask
             "saliency": img[:, :1].half(), "teacher_map": img[:, 1:2] * 2,
             "video": torch.stack([img, img * 3], dim=2),  # (N,C,T,H,W)
             "audio": torch.rand(n, 1, h, h), "label": torch.arange(n)}
    ds = JointAugment(_Fixed(batch), BatchAugment(size=h, padding=4), {"teacher_map": batch["teacher_map"]})
    out = ds.augment_batch(batch, generator=torch.Generator().manual_seed(3))
    x = out["image"]
    assert out["mask"].dtype == torch.bool and out["saliency"].dtype == torch.float16
    assert torch.equal(out["mask"], x[:, :1] > 1.0)
    assert torch.equal(out["saliency"], x[:, :1].half())
    assert torch.equal(out["teacher_map"], x[:, 1:2] * 2)
    assert torch.equal(out["video"][:, :, 0], x) and torch.equal(out["video"][:, :, 1], x * 3)
    assert out["audio"] is batch["audio"] and out["label"] is batch["label"]
    moved = ~(x == img).all(dim=(1, 2, 3))
    assert int(moved.sum()) > n // 2  # crops and flips really happened


def test_switches_and_the_config_builder():
    img = torch.rand(200, 1, 8, 8) + 1
    flips = BatchAugment(size=8, padding=0, hflip=True)({"image": img}, generator=torch.Generator().manual_seed(0))
    is_flip = (flips["image"] == img.flip(-1)).all(dim=(1, 2, 3))
    assert bool((is_flip | (flips["image"] == img).all(dim=(1, 2, 3))).all())
    assert 60 < int(is_flip.sum()) < 140
    crops = BatchAugment(size=8, padding=2, hflip=False)
    assert not bool(crops.draw(500, 8, 8)[2].any())
    assert build_train_transform(AugmentConfig(crop_padding=0, hflip=False), 8) is None
    t = build_train_transform(AugmentConfig(crop_padding=4, hflip=True), 32, hflip_ok=False)
    assert t == BatchAugment(size=32, padding=4, hflip=False)
    assert JointAugment(_Fixed({"image": img}), None).augment_batch({"image": img})["image"] is img
    with pytest.raises(TypeError, match="BatchAugment"):  # a per-sample torchvision transform
        JointAugment(_Fixed({"image": img}), v2.RandomHorizontalFlip())


class _Fixed(Dataset):
    """Samples of a dict of batched tensors (the index is the sample's)."""

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return int(self.batch["image"].shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {**{k: v[i] for k, v in self.batch.items()}, "index": torch.tensor(i)}


class _Recording(TinyDistiller):
    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(TinyNet(3))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, batch, epoch):
        self.seen.append((batch["index"].clone(), batch["image"].clone()))
        return super().forward(batch, epoch)


def test_the_engine_augments_each_batch_on_the_device(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(24, 3, 8, 8, generator=g)
    data = _Fixed({"image": images, "label": torch.arange(24) % 3})
    d = _Recording()
    always_flip = BatchAugment(size=8, padding=0, hflip=True, p=1.0)
    fit(d, JointAugment(data, always_flip), None, train_cfg(epochs=1), tmp_path, device=torch.device("cpu"),
        seed=0, log=None)
    assert len(d.seen) == 3
    for idx, seen in d.seen:
        assert torch.equal(seen, images[idx].flip(-1))
