"""``imagefolder``: the user's own images, with optional ground-truth masks (DESIGN section 4).

``data.root`` holds either ``train/``, ``val/`` and ``test/`` sub-folders (``val``/``test`` may be
missing: they are then carved from ``train`` by seeded, stratified fractions), or class folders
directly (split by seed into train/val/test). Each split folder has one sub-folder per class.
``mask_root`` (optional) mirrors the image tree: the mask of ``ROOT/REL/x.jpg`` is
``MASK_ROOT/REL/x.png`` (grey; pixels > 127 are object). Images are resized (shorter side) and
centre-cropped to ``image_size``, masks with the same geometry (nearest neighbour). The file
listing is cached and re-used while the folder is unchanged (``xkd.data.folder_index``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from pydantic import Field
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from xkd.config import DataConfig, Strict
from xkd.data.base import DATASETS, DataBundle, Sample
from xkd.data.folder_index import list_images
from xkd.data.tensors import stratified_split
from xkd.data.transforms import build_train_transform
from xkd.errors import UserError

Item = tuple[str, int]


class ImageFolderParams(Strict):
    """Parameters of ``imagefolder``."""

    image_size: int = Field(32, ge=8, le=1024, description="side of the square (resize + centre crop)")
    channels: Literal[1, 3] = 3
    mask_root: str | None = Field(None, description="folder mirroring the images with PNG masks")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="used when there is no val/ folder")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="used when there is no test/ folder")
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


class FolderSplit(Dataset):
    """Image files (and mask files) as normalised sample dicts."""

    def __init__(self, items: list[Item], masks: list[Path] | None, p: ImageFolderParams) -> None:
        self.items, self.masks, self.channels = items, masks, p.channels
        c = p.channels
        mean = p.mean if len(p.mean) == c else p.mean[:1] * c
        std = p.std if len(p.std) == c else p.std[:1] * c
        self.mean = torch.tensor(mean).view(c, 1, 1)
        self.std = torch.tensor(std).view(c, 1, 1)
        self.geometry = v2.Compose([v2.Resize(p.image_size, antialias=True), v2.CenterCrop(p.image_size)])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        path, label = self.items[i]
        with Image.open(path) as im:
            packed = {"image": tv_tensors.Image(TF.pil_to_tensor(im.convert("L" if self.channels == 1 else "RGB")))}
        if self.masks is not None:
            with Image.open(self.masks[i]) as m:
                packed["mask"] = tv_tensors.Mask(TF.pil_to_tensor(m.convert("L")))
        out = self.geometry(packed)
        sample: Sample = {
            "image": (out["image"].as_subclass(torch.Tensor).float() / 255.0 - self.mean) / self.std,
            "label": torch.tensor(label),
            "index": torch.tensor(i),
        }
        if self.masks is not None:
            sample["mask"] = (out["mask"].as_subclass(torch.Tensor) > 127).float()
        return sample


def _list(folder: Path, class_to_idx: dict[str, int]) -> list[Item]:
    """The folder's images, from the cached file index when the folder is unchanged."""
    return list_images(folder, class_to_idx, IMG_EXTENSIONS)


def _mask_paths(items: list[Item], root: Path, mask_root: Path) -> list[Path]:
    out = [mask_root / Path(p).relative_to(root).with_suffix(".png") for p, _ in items]
    missing = [m for m in out if not m.is_file()]
    if missing:
        raise UserError(f"data.params.mask_root: {len(missing)} of {len(out)} images have no mask; "
                        f"e.g. expected '{missing[0]}' (same relative path as the image, .png)")
    return out


def _take(items: list[Item], idx: torch.Tensor) -> list[Item]:
    return [items[int(i)] for i in idx]


@DATASETS.register("imagefolder", params=ImageFolderParams, content_from_root=True)
def imagefolder(params: ImageFolderParams, cfg: DataConfig, seed: int) -> DataBundle:
    """Your own images: class sub-folders, optional train/val/test split folders and masks."""
    if cfg.root is None:
        raise UserError("data.root is not set; point it at a folder of class sub-folders "
                        "(or of train/, val/, test/ folders each holding class sub-folders)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root: folder not found: '{root}'")
    split_layout = (root / "train").is_dir()
    base = root / "train" if split_layout else root
    try:
        classes, class_to_idx = find_classes(str(base))
    except FileNotFoundError as e:
        raise UserError(f"data.root: {e}") from None
    items = _list(base, class_to_idx)
    labels = torch.tensor([y for _, y in items])
    has_val = split_layout and (root / "val").is_dir()
    has_test = split_layout and (root / "test").is_dir()
    fracs = ([] if has_val else [params.val_fraction]) + ([] if has_test else [params.test_fraction])
    parts = stratified_split(labels, fracs, seed)
    splits: dict[str, list[Item]] = {"train": _take(items, parts[-1])}
    carved = iter(parts[:-1])
    for name, present in (("val", has_val), ("test", has_test)):
        if present:
            extra = set(find_classes(str(root / name))[0]) - set(classes)
            if extra:
                raise UserError(f"data.root: '{root / name}' has classes not in train: {sorted(extra)}")
            splits[name] = _list(root / name, class_to_idx)
        else:
            splits[name] = _take(items, next(carved))
    mask_root = Path(params.mask_root).expanduser() if params.mask_root else None
    if mask_root is not None and not mask_root.is_dir():
        raise UserError(f"data.params.mask_root: folder not found: '{mask_root}'")
    ds = {k: FolderSplit(v, _mask_paths(v, root, mask_root) if mask_root else None, params)
          for k, v in splits.items()}
    c = params.channels
    first = ds["train"]
    return DataBundle(
        name="imagefolder", train=ds["train"], val=ds["val"], test=ds["test"],
        num_classes=len(classes), has_masks=mask_root is not None, in_channels=c,
        image_size=params.image_size, mean=tuple(first.mean.flatten().tolist()),
        std=tuple(first.std.flatten().tolist()),
        train_transform=build_train_transform(cfg.augment, params.image_size),
        class_names=list(classes),
    )
