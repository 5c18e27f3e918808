"""torchvision datasets: ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist``, ``svhn``,
``stl10`` (DESIGN section 4).

Files come from ``data.root`` (``data.download: true`` fetches them with torchvision; tests never
download). Validation is a seeded, stratified fraction carved from the official training split;
the official test split is ``test``. Samples are normalised with the usual per-dataset statistics;
no masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
import torchvision.datasets as tvd
from pydantic import Field
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from xkd.config import DataConfig, Strict
from xkd.data.base import DATASETS, DataBundle, Sample
from xkd.data.tensors import stratified_split
from xkd.data.transforms import build_train_transform
from xkd.errors import UserError

DEFAULT_ROOT = os.path.join("~", ".cache", "xkd", "datasets")
"""Where ``download: true`` puts files when ``data.root`` is not set."""


class TorchvisionParams(Strict):
    """Parameters shared by the torchvision datasets."""

    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of the train split held out")
    train_size: int | None = Field(None, ge=1, description="seeded subset of the remaining train split")
    test_size: int | None = Field(None, ge=1, description="seeded subset of the test split")
    image_size: int | None = Field(None, ge=8, le=1024, description="resize (square); null = native")


class GreyParams(TorchvisionParams):
    channels: Literal[1, 3] = Field(1, description="3 repeats the grey channel (for RGB backbones)")


@dataclass(frozen=True)
class Spec:
    cls: Any
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip_ok: bool
    split_kw: str  # "train" (bool argument) or "split" (string argument)


SPECS: dict[str, Spec] = {
    "cifar10": Spec(tvd.CIFAR10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True, "train"),
    "cifar100": Spec(tvd.CIFAR100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True, "train"),
    "mnist": Spec(tvd.MNIST, 28, (0.1307,), (0.3081,), False, "train"),
    "fashion_mnist": Spec(tvd.FashionMNIST, 28, (0.2860,), (0.3530,), True, "train"),
    "svhn": Spec(tvd.SVHN, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False, "split"),
    "stl10": Spec(tvd.STL10, 96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), True, "split"),
}


class TorchvisionSplit(Dataset):
    """Selected indices of a torchvision dataset as normalised sample dicts."""

    def __init__(self, base: Any, indices: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 channels: int, image_size: int | None) -> None:
        self.base, self.indices = base, indices
        self.channels, self.image_size = channels, image_size
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        img, target = self.base[int(self.indices[i])]
        x = TF.pil_to_tensor(img.convert("L" if self.channels == 1 else "RGB"))
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size,) * 2:
            x = TF.resize(x, [self.image_size, self.image_size], antialias=True)
        x = (x.float() / 255.0 - self.mean) / self.std
        return {"image": x, "label": torch.tensor(int(target)), "index": torch.tensor(int(i))}


def open_dataset(name: str, cfg: DataConfig, train: bool) -> Any:
    """The torchvision dataset object; missing files and failed downloads become UserError."""
    spec = SPECS[name]
    if cfg.root is None and not cfg.download:
        raise UserError(f"data.root is not set for dataset '{name}'; set data.root to the folder "
                        "holding its files, or data.download: true to fetch them (needs internet)")
    root = os.path.expanduser(cfg.root or DEFAULT_ROOT)
    kw = {"train": train} if spec.split_kw == "train" else {"split": "train" if train else "test"}
    try:
        return spec.cls(root=root, download=cfg.download, **kw)
    except (RuntimeError, OSError, ValueError) as e:
        if cfg.download:
            raise UserError(f"data.download: could not download or read '{name}' into '{root}': {e}") from None
        raise UserError(f"data.root: '{name}' files not found or incomplete under '{root}' ({e}); "
                        "set data.download: true (needs internet) or point data.root at them") from None


def _labels(ds: Any) -> torch.Tensor:
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return torch.as_tensor(getattr(ds, attr)).long().flatten()
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))])


def _subset(idx: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    if size is None or size >= len(idx):
        return idx
    g = torch.Generator()
    g.manual_seed(seed % (1 << 63))
    return torch.sort(idx[torch.randperm(len(idx), generator=g)[:size]]).values


def build_torchvision(name: str, params: TorchvisionParams, cfg: DataConfig, seed: int) -> DataBundle:
    """Open train and test files, carve a seeded validation fraction, wrap as sample dicts."""
    spec = SPECS[name]
    channels = getattr(params, "channels", len(spec.mean))
    mean = spec.mean * channels if len(spec.mean) == 1 else spec.mean
    std = spec.std * channels if len(spec.std) == 1 else spec.std
    train_ds, test_ds = open_dataset(name, cfg, True), open_dataset(name, cfg, False)
    val_idx, train_idx = stratified_split(_labels(train_ds), [params.val_fraction], seed)
    train_idx = _subset(train_idx, params.train_size, seed + 1)
    test_idx = _subset(torch.arange(len(test_ds)), params.test_size, seed + 2)
    size = params.image_size or spec.native_size

    def wrap(ds: Any, idx: torch.Tensor) -> TorchvisionSplit:
        return TorchvisionSplit(ds, idx, mean, std, channels, params.image_size)

    classes = getattr(train_ds, "classes", None)
    num_classes = len(classes) if classes else int(_labels(train_ds).max()) + 1
    return DataBundle(
        name=name, train=wrap(train_ds, train_idx), val=wrap(train_ds, val_idx),
        test=wrap(test_ds, test_idx), num_classes=num_classes, in_channels=channels,
        image_size=size, mean=tuple(mean), std=tuple(std),
        train_transform=build_train_transform(cfg.augment, size, hflip_ok=spec.hflip_ok),
        class_names=list(classes) if classes else [str(i) for i in range(num_classes)],
    )


def _register(name: str) -> None:
    params = GreyParams if len(SPECS[name].mean) == 1 else TorchvisionParams

    def factory(params: TorchvisionParams, cfg: DataConfig, seed: int) -> DataBundle:
        return build_torchvision(name, params, cfg, seed)

    DATASETS.register(name, params=params, description=f"torchvision {SPECS[name].cls.__name__} "
                      "(data.root, data.download)")(factory)


for _name in SPECS:
    _register(_name)
