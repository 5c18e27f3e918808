"""A cached file index of an image folder (issue 18): walking 1.28 M ImageNet files takes minutes
on network storage, so the listing is built once and kept under ``$XKD_CACHE_DIR/imagefolder/``
(default ``~/.cache/xkd``; ``$XDG_CACHE_HOME`` respected).

The index is keyed by the folder's absolute path, the class mapping and the extensions, and it
records ``(mtime_ns, inode)`` of every directory it walked. Adding, removing or renaming a file
changes its directory's mtime, so a changed folder is re-indexed; checking costs one ``stat`` per
directory (about a thousand for ImageNet) instead of a walk over every file. The listing itself
is torchvision's ``make_dataset`` (same order, same extension rule).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from torchvision.datasets.folder import make_dataset

from xkd.errors import UserError
from xkd.io import read_json, write_json

log = logging.getLogger(__name__)
Item = tuple[str, int]


def cache_dir() -> Path:
    """Where folder indexes are kept."""
    base = os.environ.get("XKD_CACHE_DIR")
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "xkd"


def _stamps(folder: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for root, _dirs, _files in os.walk(folder, followlinks=True):
        st = os.stat(root)
        out[os.path.relpath(root, folder)] = [st.st_mtime_ns, st.st_ino]
    return out


def _unchanged(folder: Path, stamps: dict[str, list[int]]) -> bool:
    for rel, (mtime, ino) in stamps.items():
        try:
            st = os.stat(folder / rel)
        except OSError:
            return False
        if st.st_mtime_ns != mtime or st.st_ino != ino:
            return False
    return bool(stamps)


def list_images(folder: Path, class_to_idx: dict[str, int], extensions: tuple[str, ...]) -> list[Item]:
    """``make_dataset(folder, class_to_idx, extensions)``, from the cached index when unchanged."""
    folder = Path(folder)  # items keep the caller's spelling of the path (relative_to works)
    material = json.dumps({"folder": str(folder.resolve()), "classes": class_to_idx,
                           "ext": list(extensions)}, sort_keys=True)
    path = cache_dir() / "imagefolder" / f"{hashlib.sha256(material.encode()).hexdigest()[:24]}.json"
    if path.is_file():
        try:
            data = read_json(path)
            if _unchanged(folder, data["dirs"]):
                return [(os.path.join(str(folder), rel), int(y)) for rel, y in data["items"]]
            log.info("image folder %s changed; re-indexing", folder)
        except (UserError, KeyError, TypeError, ValueError):
            log.warning("image folder index %s unreadable; re-indexing", path)
    try:
        stamps = _stamps(folder)  # before listing: a file added meanwhile re-indexes next time
        items = make_dataset(str(folder), class_to_idx, extensions=extensions)
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"data.root: cannot read images in '{folder}': {e}") from None
    try:
        write_json(path, {"folder": str(folder), "dirs": stamps,
                          "items": [[os.path.relpath(p, folder), y] for p, y in items]})
    except OSError as e:  # a read-only cache directory only costs the next walk
        log.warning("cannot write the image folder index %s: %s", path, e)
    return items
