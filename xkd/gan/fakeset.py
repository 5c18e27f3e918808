"""Processed fake sets on disk and as datasets (cGAN-KD M3, seed_methods.md 5.5).

A processed fake set (subsampled, filtered, relabelled) is saved once per seed and setting as
``RUN/cgan/fake_<key>.npz`` (atomic, via :func:`xkd.io.save_npz`) with the identity of the data it
was generated for: dataset name, task, number of classes, image shape and the label range. Loading
a file made for another dataset or label range is one :class:`UserError` line.
The student trains on ``RealOnly(real) + FakeSplit(fake)`` (a ConcatDataset): fake samples carry
``image``, ``label`` (original units, like the real split) and an ``index`` beyond the real range;
real samples drop ``mask``/``saliency`` so that the two collate together.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xkd import io
from xkd.data.base import DataBundle, Sample
from xkd.errors import UserError

FAKE_FORMAT = 1


def data_identity(bundle: DataBundle) -> dict[str, Any]:
    """What a fake set must agree with to be used for ``bundle``."""
    return {"dataset": bundle.name, "task": bundle.task, "num_classes": int(bundle.num_classes),
            "shape": [int(bundle.in_channels), int(bundle.image_size), int(bundle.image_size)],
            "label_offset": float(bundle.label_offset), "label_scale": float(bundle.label_scale)}


def save_fake_set(path: Path, images: torch.Tensor, labels: torch.Tensor, bundle: DataBundle,
                  meta: dict[str, Any]) -> None:
    """Write images (N,C,H,W, normalised space, stored float16) and labels with their identity."""
    ident = data_identity(bundle) | {"format": FAKE_FORMAT, "identity": bundle.identity, **meta}
    io.save_npz(path, images=images.cpu().numpy().astype(np.float16),
                labels=labels.cpu().numpy(), meta=np.array(json.dumps(ident, sort_keys=True)))


def load_fake_set(path: str | Path, bundle: DataBundle, where: str = "fake_data"
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Read a fake set and check it was made for ``bundle``'s dataset and label range."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{where}: file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, meta = z["images"], z["labels"], json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"{where}: {path} is not an xkd fake-data file ({str(e).splitlines()[0][:120]})") from None
    want = data_identity(bundle)
    for key in ("dataset", "task", "num_classes", "shape"):
        if meta.get(key) != want[key]:
            raise UserError(f"{where}: {path} was made for {key} {meta.get(key)!r}, this run's data "
                            f"has {want[key]!r}; regenerate it for this dataset")
    lo, hi = meta.get("label_offset"), meta.get("label_scale")
    if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float))
            and abs(lo - want["label_offset"]) <= 1e-6 * max(1.0, abs(lo))
            and abs(hi - want["label_scale"]) <= 1e-6 * max(1.0, abs(hi))):
        raise UserError(f"{where}: {path} has label range offset {lo} scale {hi}, this run's data has "
                        f"offset {want['label_offset']} scale {want['label_scale']}; regenerate it")
    if images.ndim != 4 or len(images) != len(labels):
        raise UserError(f"{where}: {path} holds {images.shape} images and {labels.shape} labels")
    lab = torch.from_numpy(labels)
    lab = lab.long() if bundle.task == "classification" else lab.float()
    return torch.from_numpy(images.astype(np.float32)), lab, meta


class FakeSplit(Dataset):
    """Fake samples as sample dicts; ``index`` = ``offset + i`` (beyond the real split)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, offset: int) -> None:
        self.images, self.labels, self.offset = images, labels, int(offset)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Sample:
        i = int(i)
        return {"image": self.images[i], "label": self.labels[i].clone(),
                "index": torch.tensor(self.offset + i, dtype=torch.long)}


class RealOnly(Dataset):
    """A real split reduced to ``image``, ``label``, ``index`` (so it collates with fakes)."""

    KEYS = ("image", "label", "index")

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Sample:
        s = self.dataset[i]
        return {k: s[k] for k in self.KEYS}
