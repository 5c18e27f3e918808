"""xkd.data: procedural shapes (determinism, masks, decoy), digits, torchvision and image-folder
wrappers on local fixtures (nothing downloads), joint augmentation, params validation."""

from __future__ import annotations

import math
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset, default_collate

from xkd.config import AugmentConfig, DataConfig
from xkd.data import DATASETS, JointAugment, build_data, build_train_transform, list_datasets, render
from xkd.data.shapes import MARKER_COLOURS, marker_masks
from xkd.data.tensors import stratified_split
from xkd.errors import ConfigError, UnknownNameError, UserError

SMALL = {"train_size": 300, "val_size": 40, "test_size": 300}


def shapes(seed: int = 0, aug: AugmentConfig | None = None, **params) -> "object":
    cfg = DataConfig(name="shapes", params={**SMALL, **params}, augment=aug or AugmentConfig())
    return build_data(cfg, seed)


# ----------------------------------------------------------------------------- registry, params


def test_registry_lists_all_builtin_names():
    names = set(list_datasets())
    assert {"shapes", "shapes_count", "shapes_angle", "digits", "imagefolder", "cifar10", "cifar100",
            "mnist", "fashion_mnist", "svhn", "stl10"} <= names
    assert all(DATASETS.entry(n).params is not None for n in names)


@pytest.mark.parametrize("params,path", [
    ({"num_classes": 9}, "data.params.num_classes"),
    ({"colour": 1}, "data.params.colour"),
    ({"decoy": {"probability": 1.5}}, "data.params.decoy.probability"),
    ({"decoy": {"sizee": 3}}, "data.params.decoy.sizee"),
])
def test_bad_params_give_config_error_with_field_path(params, path):
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="shapes", params=params), 0)
    assert e.value.path == path and path in str(e.value)


def test_override_errors_use_the_given_path_and_unknown_names_are_listed():
    with pytest.raises(ConfigError) as e:
        build_data(DataConfig(name="shapes"), 0, {"image_size": 4}, path="students[1].data")
    assert e.value.path == "students[1].data.image_size"
    with pytest.raises(ConfigError, match="decoy.size 9 must be <= image_size // 4 = 8"):
        build_data(DataConfig(name="shapes", params={"decoy": {"size": 9}}), 0)
    with pytest.raises(UnknownNameError, match="allowed: .*shapes"):
        build_data(DataConfig(name="shapez"), 0)


def test_identity_names_content_and_overrides_merge():
    a, b = shapes(0), shapes(1)
    assert a.identity == shapes(0).identity and a.identity != b.identity
    assert a.identity.startswith("shapes|") and '"num_classes":4' in a.identity
    d = build_data(DataConfig(name="shapes", params={**SMALL, "decoy": {}}), 0, {"decoy": None})
    assert d.extra_tests == {} and d.identity == a.identity


# ----------------------------------------------------------------------------- shapes


def test_shapes_are_deterministic_per_seed_split_and_index():
    a, b, c = shapes(0), shapes(0), shapes(1)
    for i in (0, 5, 299):
        for k in ("image", "mask", "label"):
            assert torch.equal(a.train[i][k], b.train[i][k])
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:10], a.test.images[:10])  # splits differ
    # a sample does not depend on how many samples its split holds
    bigger = shapes(0, train_size=700)
    assert torch.equal(bigger.train.images[:300], a.train.images)
    s = a.train[7]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert s["label"].dtype == torch.long and int(s["index"]) == 7 and a.has_masks


def test_shape_areas_match_hand_computed_values():
    """Rasterised area / r^2 against closed forms, at several rotations."""
    lens = lambda r1, r2, d: (r1**2 * math.acos((d**2 + r1**2 - r2**2) / (2 * d * r1))  # noqa: E731
                              + r2**2 * math.acos((d**2 + r2**2 - r1**2) / (2 * d * r2))
                              - 0.5 * math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2)))
    phi = np.linspace(0, 2 * np.pi, 200001)
    star_rho = 0.38 + 0.6 * np.abs(2 * np.mod(phi / (2 * np.pi) * 5, 1) - 1)
    expected = {
        "circle": math.pi * 0.8**2, "square": 1.36**2, "triangle": 3 * math.sqrt(3) / 4,
        "cross": 2 * 0.54 * 1.84 - 0.54**2, "star": float(np.trapezoid(0.5 * star_rho**2, phi)),
        "ring": math.pi * (0.95**2 - 0.52**2), "ellipse": math.pi * 0.97 * 0.42,
        "crescent": math.pi * 0.92**2 - lens(0.92, 0.72, 0.5),
    }
    size, r = 241, 100.0
    for k, name in enumerate(render.SHAPE_NAMES):
        for theta in (0.0, 0.7, 2.0):
            m = render.shape_masks(torch.tensor([k]), torch.tensor([120.37]), torch.tensor([120.81]),
                                   torch.tensor([r]), torch.tensor([theta]), size)
            assert float(m.sum()) / r**2 == pytest.approx(expected[name], rel=0.01), (name, theta)


def test_masks_are_binary_and_exactly_the_object_pixels():
    # without texture, clutter and noise a sample has two colours: background and object
    b = shapes(texture=0.0, clutter=0, noise=0.0, num_classes=8)
    for i in range(100):
        img, mask = b.train.images[i], b.train.masks[i, 0].bool()
        assert set(b.train.masks[i].unique().tolist()) <= {0, 1} and mask.any()
        obj = img[:, mask]
        assert (obj == obj[:, :1]).all()  # one object colour
        bg = img[:, ~mask]
        assert (bg == bg[:, :1]).all() and not torch.equal(obj[:, 0], bg[:, 0])
    # with the default texture the object is uniform, its surroundings are not
    d = shapes()
    x = d.train.images.float() / 255
    m = d.train.masks[:, 0].bool()
    ring = torch.tensor(ndimage.binary_dilation(m.numpy(), np.ones((1, 3, 3)), iterations=2)) & ~m
    inner = torch.tensor(ndimage.binary_erosion(m.numpy(), np.ones((1, 3, 3))))
    med = torch.stack([x[i][:, m[i]].median(1).values for i in range(len(x))])[:, :, None, None]
    dev = (x - med).abs().mean(1)
    assert float(dev[inner].mean()) < 0.05 and float(dev[ring].mean()) > 0.2


def test_generation_of_ten_thousand_samples(capsys):
    t = time.perf_counter()
    b = shapes(train_size=10000, val_size=10, test_size=10)
    elapsed = time.perf_counter() - t
    with capsys.disabled():
        print(f"\n[shapes] 10,000 train + 20 val/test samples of 32x32 in {elapsed:.2f} s")
    counts = torch.bincount(b.train.labels, minlength=4).float() / 10000
    assert (counts - 0.25).abs().max() < 0.02
    area = b.train.masks.flatten(1).float().mean(1)
    assert bool((area > 0.02).all()) and bool((area < 0.5).all())


# ----------------------------------------------------------------------------- decoy


def marker_class(images: torch.Tensor, size: int, k: int) -> torch.Tensor:
    """Which class marker (exact colour in its corner) each uint8 image carries; -1 none."""
    corners = marker_masks(images.shape[-1], size)
    colours = (torch.tensor(MARKER_COLOURS) * 255).round().to(torch.uint8)
    out = torch.full((len(images),), -1)
    for c in range(k):
        sel = corners[c % 4]
        hit = (images[:, :, sel] == colours[c][None, :, None]).all(2).all(1)
        out[hit] = c
    return out


def test_decoy_marker_correlates_in_train_and_not_in_shuffled_test():
    b = shapes(train_size=1000, decoy={"probability": 0.9, "size": 6})
    assert set(b.extra_tests) == {"test_decoy_shuffled"}
    tr = marker_class(b.train.images, 6, 4)
    present = tr >= 0
    assert abs(float(present.float().mean()) - 0.9) < 0.04
    assert torch.equal(tr[present], b.train.labels[present])  # the marker is the class marker
    assert bool((marker_class(b.val.images, 6, 4) >= 0).any())  # apply_to: train_val
    assert bool((marker_class(b.test.images, 6, 4) == -1).all())  # test is clean
    sh = b.extra_tests["test_decoy_shuffled"]
    m = marker_class(sh.images, 6, 4)
    assert bool((m >= 0).all()) and not bool((m == sh.labels).any())
    assert torch.bincount(m, minlength=4).min() > 40  # every other class appears
    # same test images apart from the marker corner, same masks and labels
    corner = marker_masks(32, 6).any(0)
    assert torch.equal(sh.images[:, :, ~corner], b.test.images[:, :, ~corner])
    assert torch.equal(sh.masks, b.test.masks) and torch.equal(sh.labels, b.test.labels)
    # the marker never lies inside (or hides) the object mask
    for split in (b.train, sh):
        assert not bool(split.masks[:, 0][:, corner].any())


def test_decoy_keeps_scenes_and_apply_to_train_leaves_val_clean():
    clean = shapes()
    d = shapes(decoy={"probability": 1.0, "apply_to": "train"})
    corner = marker_masks(32, 6).any(0)
    assert torch.equal(d.train.images[:, :, ~corner], clean.train.images[:, :, ~corner])
    assert torch.equal(d.train.masks, clean.train.masks)
    assert bool((marker_class(d.train.images, 6, 4) == d.train.labels).all())
    assert torch.equal(d.val.images, clean.val.images) and torch.equal(d.test.images, clean.test.images)


# ----------------------------------------------------------------------------- regression variants


def test_shapes_count_label_is_the_number_of_objects():
    b = build_data(DataConfig(name="shapes_count", params={**SMALL, "kinds": 1, "min_count": 0}), 0)
    assert b.task == "regression" and b.num_classes == 1 and b.train[0]["label"].dtype == torch.float32
    n = [ndimage.label(m[0].numpy())[1] for m in b.train.masks]
    agree = np.mean(np.array(n) == b.train.labels.numpy())
    assert agree > 0.97 and set(b.train.labels.tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}


def test_shapes_angle_label_matches_the_mask_orientation():
    b = build_data(DataConfig(name="shapes_angle", params={**SMALL, "noise": 0.0}), 0)
    assert b.task == "regression" and b.train_transform is not None
    assert not b.train_transform.hflip
    theta = b.train.labels
    assert float(theta.abs().max()) <= math.radians(60) + 1e-6
    errs = []
    for m, t in zip(b.train.masks[:, 0], theta):
        rows, cols = torch.nonzero(m, as_tuple=True)
        x, y = cols.float() - cols.float().mean(), -(rows.float() - rows.float().mean())
        axis = 0.5 * math.atan2(2 * float((x * y).mean()), float((x * x).mean() - (y * y).mean()))
        errs.append(abs(math.degrees(axis - float(t))))
    assert np.median(errs) < 6 and np.mean(np.array(errs) < 15) > 0.9


# ----------------------------------------------------------------------------- digits


def test_digits_match_sklearn_and_split_by_seed():
    from sklearn.datasets import load_digits

    ref = load_digits()
    b = build_data(DataConfig(name="digits", params={"image_size": 8}), 0)
    assert len(b.train) + len(b.val) + len(b.test) == 1797 and b.in_channels == 1 and b.has_masks
    s = b.train[0]
    pix = s["image"] * b.std[0] + b.mean[0]
    matches = np.abs(ref.images / 16.0 - pix.numpy()[0]).reshape(1797, -1).max(1) < 0.5 / 255 + 1e-6
    assert matches.sum() >= 1 and int(ref.target[matches][0]) == int(s["label"])
    assert torch.equal(s["mask"][0].bool(), pix[0] > 0.35)
    parts = stratified_split(torch.tensor(ref.target), [0.15, 0.2], 0)
    allidx = torch.cat(parts)
    assert len(allidx) == 1797 and len(allidx.unique()) == 1797
    assert torch.equal(b.train.labels, torch.tensor(ref.target)[parts[2]])
    other = build_data(DataConfig(name="digits"), 1)
    assert not torch.equal(other.train.labels[:50], build_data(DataConfig(name="digits"), 0).train.labels[:50])
    rgb = build_data(DataConfig(name="digits", params={"channels": 3}), 0)
    assert rgb.train[0]["image"].shape == (3, 32, 32) and rgb.train_transform is not None


# ----------------------------------------------------------------------------- joint augmentation


SPOT = [(2, 9), (2, 10), (2, 11), (3, 9)]
"""An L-shaped spot: a mirror moves the row-3 pixel from the left end to the right end."""


class SpotData(Dataset):
    """A 3x16x16 image with a bright L-shaped spot off-centre; the mask marks it."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = torch.zeros(3, 16, 16)
        for r, c in SPOT:
            img[:, r, c] = 1.0
        return {"image": img, "label": torch.tensor(i + 10), "index": torch.tensor(i),
                "mask": (img[:1] > 0).float()}


def test_joint_augment_keeps_image_mask_and_saliency_aligned():
    sal = np.zeros((3, 1, 16, 16), dtype=np.float16)  # like a float16 memory-mapped cache
    for r, c in SPOT:
        sal[:, 0, r, c] = 0.75
    sal[2, 0, 0, 0] = 0.25  # index 2 carries a second, dimmer blob: extras follow the index
    ds = JointAugment(SpotData(), build_train_transform(AugmentConfig(crop_padding=4, hflip=True), 16),
                      {"saliency": sal})
    positions, flipped = set(), 0
    for seed in range(60):
        torch.manual_seed(seed)
        s = {k: v[0] for k, v in ds.augment_batch(default_collate([ds[seed % 3]])).items()}
        assert set(s) == {"image", "label", "index", "mask", "saliency"}
        assert type(s["image"]) is torch.Tensor and type(s["saliency"]) is torch.Tensor
        assert s["saliency"].dtype == torch.float32 and s["image"].shape == (3, 16, 16)
        assert int(s["label"]) == seed % 3 + 10 and int(s["index"]) == seed % 3
        spot = s["image"][0] > 0.5
        assert torch.equal(spot, s["mask"][0] > 0.5)
        assert torch.equal(spot, s["saliency"][0] == 0.75)
        if int(spot.sum()) == 4:  # fully inside the crop
            rows, cols = torch.nonzero(spot, as_tuple=True)
            positions.add((int(rows.min()), int(cols.min())))
            flipped += int(cols[rows == rows.max()]) == int(cols.max())
    assert len(positions) > 10 and 5 < flipped < 55  # crops and flips really happened
    plain = JointAugment(SpotData(), None, {"saliency": torch.from_numpy(sal)})[2]
    assert float(plain["saliency"][0, 0, 0]) == 0.25 and build_train_transform(
        AugmentConfig(crop_padding=0, hflip=False), 16) is None


def test_bundle_batches_through_joint_augment_and_dataloader():
    b = shapes(aug=AugmentConfig(crop_padding=2))
    sal = torch.rand(len(b.train), 1, 32, 32)
    ds = JointAugment(b.train, b.train_transform, {"saliency": sal})
    batch = ds.augment_batch(next(iter(DataLoader(ds, batch_size=8))))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["mask"].shape == (8, 1, 32, 32)
    assert batch["saliency"].shape == (8, 1, 32, 32) and batch["label"].dtype == torch.long
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- torchvision sets


def write_fake_cifar10(root: Path, n_train: int = 10, n_test: int = 6) -> np.ndarray:
    """The real on-disk format (pickled dicts of uint8 rows) with few images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for name, n in [*[(f"data_batch_{i}", n_train) for i in range(1, 6)], ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        train += [data] if name != "test_batch" else []
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [int(v) for v in np.arange(n) % 10]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return np.concatenate(train)


def test_fake_cifar10_loads_without_download(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    train_rows = write_fake_cifar10(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # md5 of real files
    b = build_data(DataConfig(name="cifar10", root=str(tmp_path), params={"val_fraction": 0.2}), 0)
    assert (len(b.train), len(b.val), len(b.test)) == (40, 10, 6) and b.num_classes == 10
    assert not b.has_masks and b.class_names[3] == "c3"
    val_labels = torch.stack([b.val[i]["label"] for i in range(10)])
    assert torch.equal(val_labels.sort().values, torch.arange(10))  # stratified: one per class
    j = int(b.train.indices[0])
    raw = torch.tensor(train_rows[j].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(b.mean).view(3, 1, 1), torch.tensor(b.std).view(3, 1, 1)
    assert torch.allclose(b.train[0]["image"], (raw - mean) / std, atol=1e-5)
    assert int(b.train[0]["label"]) == j % 10 and int(b.train[0]["index"]) == 0


def test_fake_mnist_loads_with_channels_and_resize(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + imgs.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    b = build_data(DataConfig(name="mnist", root=str(tmp_path), params={"channels": 3, "image_size": 32}), 0)
    assert b.in_channels == 3 and b.image_size == 32 and b.train[0]["image"].shape == (3, 32, 32)
    assert len(b.test) == 8 and len(b.train) + len(b.val) == 20
    assert not b.train_transform.hflip


def test_missing_torchvision_files_name_root_and_download(tmp_path):
    with pytest.raises(UserError, match=r"data\.root.*download: true"):
        build_data(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")), 0)
    with pytest.raises(UserError, match=r"data\.root is not set.*download: true"):
        build_data(DataConfig(name="svhn"), 0)


# ----------------------------------------------------------------------------- image folder


def write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_imagefolder_with_split_folders_and_masks(tmp_path):
    root, masks = tmp_path / "img", tmp_path / "masks"
    for split, n in (("train", 6), ("test", 2)):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(n):
                img = np.zeros((40, 40, 3), np.uint8)
                img[10:20, 20:30] = (255, 128 * c, 0)
                write_png(root / split / cls / f"{i}.png", img)
                m = np.zeros((40, 40), np.uint8)
                m[10:20, 20:30] = 255
                write_png(masks / split / cls / f"{i}.png", m)
    p = {"image_size": 20, "mask_root": str(masks), "val_fraction": 0.34, "mean": [0, 0, 0], "std": [1, 1, 1]}
    b = build_data(DataConfig(name="imagefolder", root=str(root), params=p), 0)
    assert b.class_names == ["cat", "dog"] and b.has_masks and b.identity.endswith(f"root={root}")
    assert (len(b.train), len(b.val), len(b.test)) == (8, 4, 4)
    s = b.test[3]
    assert int(s["label"]) == 1 and s["image"].shape == (3, 20, 20)
    assert torch.equal(s["mask"][0] > 0.5, s["image"][0] > 0.5)  # halved: rows 5..9, cols 10..14
    assert s["mask"][0, 5:10, 10:15].all() and float(s["mask"].sum()) == 25
    (masks / "train" / "dog" / "0.png").unlink()
    with pytest.raises(UserError, match=r"mask_root: 1 of 8 images have no mask"):
        build_data(DataConfig(name="imagefolder", root=str(root), params=p), 0)


def test_imagefolder_single_folder_is_split_by_seed(tmp_path):
    for cls in ("a", "b", "c"):
        for i in range(10):
            write_png(tmp_path / cls / f"{i}.png", np.full((8, 12), 20 * i, np.uint8))
    cfg = DataConfig(name="imagefolder", root=str(tmp_path), params={"image_size": 8, "channels": 1})
    b0, b1 = build_data(cfg, 0), build_data(cfg, 1)
    assert (len(b0.train), len(b0.val), len(b0.test)) == (21, 3, 6) and b0.in_channels == 1
    assert b0.train.items != b1.train.items and b0.train.items == build_data(cfg, 0).train.items
    assert not set(b0.train.items) & set(b0.test.items)
    with pytest.raises(UserError, match="data.root"):
        build_data(DataConfig(name="imagefolder", root=str(tmp_path / "missing")), 0)
