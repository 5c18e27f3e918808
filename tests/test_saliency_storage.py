"""Saliency cache storage resolution (issue 18): 'input' is bit-identical to the float16 cache it
replaces, area storage pools exactly like the loss does, Grad-CAM is kept at its layer's size,
and a 224 px tv:resnet18 Grad-CAM cache holds at most 4 KB per map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import xkd.explain as E
from xkd.config import DataConfig, ExplainConfig
from xkd.data.transforms import BatchAugment, JointAugment
from xkd.distill.reviewkd.weights import level_weights
from xkd.errors import ConfigError
from tests.test_saliency_cache import Images, Tiny


def _build(root, teacher, cfg, data=None, read_size=None):
    return E.SaliencyCache.build_or_load(root, teacher, data or Images(), cfg, "images:n=10:seed=5",
                                         device="cpu", batch_size=4, progress=False, read_size=read_size)


def _today(teacher, cfg):
    """The cache before storage sizes: explain() at input resolution, cast to float16 and back."""
    d = Images()
    with torch.no_grad():
        top1 = teacher.eval()(d.x).argmax(1)
    return E.build_from_config(cfg, teacher).explain(d.x, top1).half().float()


@pytest.fixture
def teacher() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_input_storage_is_bit_identical_to_the_full_resolution_cache(tmp_path, teacher, method):
    cfg = ExplainConfig(method=method, max_batch=4, storage_size="input")
    c = _build(tmp_path, teacher, cfg)
    today = _today(teacher, cfg)
    assert c.shape == (10, 1, 16, 16) and torch.equal(c.batch(range(10)), today)
    # ... and so is what joint augmentation hands to the loss (same seed, same crops and flips)
    aug = BatchAugment(16, padding=4)
    new, old = JointAugment(Images(), aug, {"saliency": c}), JointAugment(Images(), aug, {"saliency": today})
    for i in range(10):
        torch.manual_seed(i)
        a = new.augmented(i)
        torch.manual_seed(i)
        b = old.augmented(i)
        assert torch.equal(a["saliency"], b["saliency"]) and torch.equal(a["image"], b["image"])


def test_area_storage_pools_exactly_like_the_loss_without_augmentation(tmp_path, teacher):
    cfg = ExplainConfig(method="saliency", max_batch=4)
    c = _build(tmp_path, teacher, cfg, read_size=(8, 8))  # 'auto' for a consumer whose finest level is 8x8
    assert c.spec == {"mode": "area", "size": [8, 8]} and c.shape == (10, 1, 8, 8)
    full = _today(teacher, cfg)
    up = c.batch(range(10))
    assert up.shape == (10, 1, 16, 16)
    # nearest-neighbour enlargement: each stored cell covers its 2x2 pixels exactly
    assert torch.equal(up, c.stored(range(10)).repeat_interleave(2, -2).repeat_interleave(2, -1))
    for size in [(8, 8), (4, 4), (2, 2)]:  # every level whose size divides the storage size
        ref = level_weights(full, size, 0.7)
        got = level_weights(up, size, 0.7)
        assert torch.allclose(got, ref, rtol=2e-3, atol=1e-4), size
    assert torch.allclose(c.stored(range(10)), F.adaptive_avg_pool2d(full, 8), rtol=1e-3, atol=1e-4)


def test_gradcam_native_storage_matches_explain(tmp_path, teacher):
    cfg = ExplainConfig(method="gradcam", max_batch=4, params={"normalize": "sum"})
    c = _build(tmp_path, teacher, cfg, read_size=(16, 16))  # native wins over the consumer's level
    assert c.spec["mode"] == "native" and c.shape == (10, 1, 8, 8)
    ref = _today(teacher, cfg)
    assert torch.allclose(c.batch(range(10)), ref, rtol=2e-3, atol=1e-6)
    assert torch.allclose(c.batch(range(10)).sum((1, 2, 3)), torch.ones(10), atol=1e-5)


def test_storage_size_errors(tmp_path, teacher):
    with pytest.raises(ConfigError, match="explain.storage_size: 32 is larger than the images"):
        _build(tmp_path, teacher, ExplainConfig(method="saliency", storage_size=32))
    with pytest.raises(Exception, match="storage_size"):
        ExplainConfig(storage_size=0)


def test_resnet18_gradcam_cache_of_224px_folder_is_under_4kb_per_map(tmp_path):
    from xkd.data.imagefolder import ImageFolderParams, imagefolder
    from xkd.models import build as build_model

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        for i in range(5):
            arr = rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "img" / c / f"{i}.png")
    bundle = imagefolder(ImageFolderParams(image_size=224, val_fraction=0.1, test_fraction=0.1),
                         DataConfig(name="imagefolder", root=str(tmp_path / "img")), seed=0)
    assert bundle.train[0]["image"].shape == (3, 224, 224)
    torch.manual_seed(0)
    teacher = build_model("tv:resnet18", num_classes=2, in_channels=3, image_size=224)
    c = E.SaliencyCache.build_or_load(tmp_path / "sal", teacher, bundle.train, ExplainConfig(),
                                      bundle.identity, device="cpu", batch_size=8, progress=False)
    n = len(bundle.train)
    per_map = c.path.stat().st_size / n
    assert c.shape == (n, 1, 7, 7) and per_map <= 4096  # ~100 KB per map at input resolution before
    from xkd.explain import blockfile as B

    imagenet = B.Layout(1_281_167, 7, 7, B.default_block(7, 7))  # the same layout at ImageNet size
    assert imagenet.file_bytes / imagenet.n < 104  # 98 B of float16 + 4 B scale (+ trailer, padding)
    assert c[0].shape == (1, 224, 224) and float(c[0].max()) == pytest.approx(1.0, abs=1e-3)


def test_storage_size_larger_than_the_images_is_refused_by_check(write_experiment, capsys):
    from tests.conftest import tiny_experiment
    from xkd.run import main

    exp = tiny_experiment(students=[{"name": "w", "method": "reviewkd", "model": {"name": "resnet8"},
                                     "params": {"saliency_mix": 0.5, "warmup_epochs": 0}}],
                          explain={"storage_size": 64})
    assert main([str(write_experiment(exp)), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: explain.storage_size: 64 is larger than the images (16x16); allowed: "
                   "'auto', 'input' or an integer <= 16"]
