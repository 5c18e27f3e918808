"""Fake data in the real on-disk formats, for ``python -m xkd.reproduce SUITE --dry-run``.

* CIFAR-100: ``ROOT/cifar-100-python/{train,test,meta}``, the python pickles torchvision's
  ``CIFAR100`` reads (``data`` as N x 3072 uint8 rows, channel-major 32x32 planes; ``fine_labels``,
  ``coarse_labels``, ``filenames``; ``meta`` with ``fine_label_names``/``coarse_label_names``).
  The files cannot carry the real archive's MD5 sums, so :func:`unverified_cifar100` lets
  torchvision skip that one check while the dry run reads them; everything else (paths, pickle
  layout, xkd's wrapper, transforms) is the real code path.
* ImageNet-style image folder: ``ROOT/{train,test}/<wnid>/<name>.JPEG`` of mixed sizes.
* A teacher checkpoint: the file's teacher model with fresh weights, wrapped like the community
  CIFAR-100 teachers (``{"model": state_dict, "epoch": ..., "best_acc": ...}``) but with xkd's key
  names; ``teacher.pretrained`` reads it like a real one.

Images are seeded noise around a class-dependent colour, so nothing is downloaded or learned.
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from xkd.config import ModelConfig
from xkd.io import torch_save

CIFAR100_CLASSES = 100
CIFAR100_COARSE = 20


def _images(n: int, labels: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(n, h, w, 3) uint8: noise around a colour that depends on the label."""
    hue = np.stack([(labels * 37) % 256, (labels * 91) % 256, (labels * 53) % 256], 1).astype(np.float32)
    noise = rng.normal(0.0, 40.0, size=(n, h, w, 3)).astype(np.float32)
    return np.clip(hue[:, None, None, :] * 0.6 + 50 + noise, 0, 255).astype(np.uint8)


def write_cifar100(root: str | Path, train_per_class: int = 3, test_per_class: int = 1,
                   seed: int = 0) -> Path:
    """Write fake CIFAR-100 python pickles under ``root/cifar-100-python``; returns ``root``."""
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(CIFAR100_CLASSES), per_class)
        rng.shuffle(labels)
        imgs = _images(len(labels), labels, 32, 32, rng)
        entry = {"filenames": [f"fake_{split}_{i}.png" for i in range(len(labels))],
                 "batch_label": f"fake {split} batch",
                 "fine_labels": labels.tolist(),
                 "coarse_labels": (labels % CIFAR100_COARSE).tolist(),
                 "data": imgs.transpose(0, 3, 1, 2).reshape(len(labels), -1)}  # CHW rows, as the archive
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f)
    meta = {"fine_label_names": [f"class_{i:03d}" for i in range(CIFAR100_CLASSES)],
            "coarse_label_names": [f"super_{i:02d}" for i in range(CIFAR100_COARSE)]}
    with open(folder / "meta", "wb") as f:
        pickle.dump(meta, f)
    return root


@contextlib.contextmanager
def unverified_cifar100() -> Iterator[None]:
    """torchvision's CIFAR-100 checks the files' MD5 sums against the official archive; fake files
    cannot match them, so within this block it checks only that they exist (restored on exit)."""
    from torchvision.datasets import CIFAR100

    saved = (CIFAR100.train_list, CIFAR100.test_list, CIFAR100.meta)
    CIFAR100.train_list = [[name, None] for name, _ in saved[0]]
    CIFAR100.test_list = [[name, None] for name, _ in saved[1]]
    CIFAR100.meta = {**saved[2], "md5": None}
    try:
        yield
    finally:
        CIFAR100.train_list, CIFAR100.test_list, CIFAR100.meta = saved


def write_imagefolder(root: str | Path, classes: int = 4, train_per_class: int = 20,
                      test_per_class: int = 4, seed: int = 0) -> Path:
    """Write an ImageNet-style folder (``train/`` and ``test/``, one folder per WordNet-like id,
    JPEG files of varying size); returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            d = root / split / f"n{1440764 + c:08d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = int(rng.integers(60, 110)), int(rng.integers(60, 110))
                img = _images(1, np.array([c]), h, w, rng)[0]
                Image.fromarray(img).save(d / f"{split}_{c}_{i}.JPEG", quality=85)
    return root


def write_teacher(path: str | Path, model: ModelConfig, num_classes: int, in_channels: int = 3,
                  image_size: int = 32, seed: int = 0) -> Path:
    """The teacher of ``model`` with fresh (seeded) weights, saved as ``{"model": state_dict, ...}``."""
    from xkd.models import build

    torch.manual_seed(seed)
    net = build(model.model_copy(update={"checkpoint": None}), num_classes=num_classes,
                in_channels=in_channels, image_size=image_size, path="teacher.model")
    path = Path(path)
    torch_save(path, {"model": net.state_dict(), "epoch": 240, "best_acc": 0.0})  # the community wrapper
    return path
