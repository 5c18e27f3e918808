"""Image-folder file index (issue 18): built once, reused without walking while the folder is
unchanged, rebuilt when a file is added anywhere (also in a nested folder) or removed."""

from __future__ import annotations

import os
import time

import pytest
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

import xkd.data.folder_index as FI


def _img(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XKD_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(3):
            _img(root / c / f"{i}.png")
    _img(root / "b" / "deep" / "x.png")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def _walks(monkeypatch) -> list[str]:
    seen: list[str] = []
    original = FI.make_dataset

    def counting(directory, *a, **k):
        seen.append(directory)
        return original(directory, *a, **k)

    monkeypatch.setattr(FI, "make_dataset", counting)
    return seen


def test_index_reused_until_the_folder_changes(folder, monkeypatch):
    classes = {"a": 0, "b": 1}
    walks = _walks(monkeypatch)
    first = FI.list_images(folder, classes, IMG_EXTENSIONS)
    assert first == make_dataset(str(folder), classes, extensions=IMG_EXTENSIONS) and len(first) == 7
    assert len(walks) == 1 and len(list((FI.cache_dir() / "imagefolder").glob("*.json"))) == 1
    assert FI.list_images(folder, classes, IMG_EXTENSIONS) == first and len(walks) == 1  # no walk
    time.sleep(0.01)
    _img(folder / "b" / "deep" / "y.png")  # a file added in a nested folder
    again = FI.list_images(folder, classes, IMG_EXTENSIONS)
    assert len(walks) == 2 and len(again) == 8 and again == make_dataset(str(folder), classes,
                                                                          extensions=IMG_EXTENSIONS)
    os.remove(folder / "a" / "0.png")
    assert len(FI.list_images(folder, classes, IMG_EXTENSIONS)) == 7 and len(walks) == 3
    assert len(FI.list_images(folder, {"a": 0}, IMG_EXTENSIONS)) == 2  # another class map: own index


def test_imagefolder_dataset_uses_the_index(folder, monkeypatch):
    from xkd.config import DataConfig
    from xkd.data.imagefolder import ImageFolderParams, imagefolder

    walks = _walks(monkeypatch)
    p, cfg = ImageFolderParams(image_size=8), DataConfig(name="imagefolder", root=str(folder))
    b1 = imagefolder(p, cfg, seed=0)
    b2 = imagefolder(p, cfg, seed=0)
    assert len(walks) == 1 and b1.train.items == b2.train.items
