"""Reading a saliency cache: the index, the teacher hash and a lazily verified block reader.

Opening reads ``index.json`` and the file's 4 KiB header (O(1) in the number of maps). A block
is verified (blake2b checksum, :mod:`xkd.explain.blockfile`) the first time this process reads
one of its maps; later reads fetch only the rows asked for through a memory map. A block that
fails is never used: with a ``repair`` hook (the process that built or loaded the cache) it is
recomputed in place and read again; without one (a DataLoader worker process) its number is
appended to ``<file>.bad`` and a :class:`~xkd.errors.UserError` asks to run again, and the next
``build_or_load`` rebuilds the blocks listed there.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from xkd.errors import UserError
from xkd.explain import blockfile as B
from xkd.explain import storage
from xkd.io import read_json, write_json

log = logging.getLogger("xkd.explain.cache")
INDEX = "index.json"


def teacher_hash(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every state_dict tensor."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_index(root: Path) -> dict[str, Any]:
    if not (root / INDEX).is_file():
        return {}
    try:
        caches = read_json(root / INDEX).get("caches", {})
        return caches if isinstance(caches, dict) else {}
    except UserError as e:
        log.warning("saliency cache index unreadable (%s); starting a new one", e)
        return {}


def write_index(root: Path, caches: dict[str, Any]) -> None:
    write_json(root / INDEX, {"caches": caches})


def bad_path(path: Path) -> Path:
    """Side file listing blocks found corrupt by a process that could not repair them."""
    return path.with_name(path.name + ".bad")


def read_bad(path: Path) -> list[int]:
    p = bad_path(path)
    if not p.is_file():
        return []
    return sorted({int(x) for x in p.read_text().split() if x.strip().isdigit()})


def layout_of(entry: dict[str, Any]) -> B.Layout:
    lay = entry.get("layout") or {}
    return B.Layout(int(lay["n"]), int(lay["h"]), int(lay["w"]), int(lay["block"]))


def entry_problem(root: Path, key: str, entry: dict[str, Any] | None) -> str:
    """Why ``entry`` cannot be opened ('' when it can): completeness, format, size, header."""
    if entry is None:
        return "missing"
    if entry.get("format") != B.FORMAT or "layout" not in entry:
        return "written in an older format"
    if not entry.get("complete"):
        return "incomplete (an earlier build was interrupted)"
    return B.header_problem(root / str(entry.get("file", "")), layout_of(entry), key)


class CacheReader:
    """Read-only view of one cache: ``cache[i]`` -> (1,H,W) float32 at the image size."""

    def __init__(self, root: str | os.PathLike, key: str, entry: dict[str, Any], status: str = "loaded",
                 reason: str = "", repair: Callable[[int], None] | None = None) -> None:
        self.root, self.key, self.entry = Path(root), key, entry
        self.path = self.root / entry["file"]
        self.status, self.reason = status, reason
        self.layout = layout_of(entry)
        self.spec: dict[str, Any] = dict(entry["storage"])
        self.image_size = (int(entry["image_shape"][-2]), int(entry["image_shape"][-1]))
        self._repair, self._owner = repair, os.getpid()
        self._verified: set[int] = set()
        self._fd: int | None = None
        self._views: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return self.layout.n

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Stored shape (N,1,h,w)."""
        return (self.layout.n, 1, self.layout.h, self.layout.w)

    @property
    def teacher_hash(self) -> str:
        return str(self.entry.get("teacher_hash", ""))

    # ------------------------------------------------------------------ reading
    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch([int(i)])[0]

    def batch(self, indices: torch.Tensor | list[int] | range) -> torch.Tensor:
        """Maps (B,1,H,W) float32 at the image size for dataset indices."""
        return storage.to_image(self.stored(indices), self.spec, self.image_size)

    def stored(self, indices: torch.Tensor | list[int] | range) -> torch.Tensor:
        """Maps (B,1,h,w) float32 at the storage size (blocks verified on first use)."""
        idx = np.asarray(torch.as_tensor(list(indices) if isinstance(indices, range) else indices)
                         .cpu().numpy(), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.layout.n):
            raise IndexError(f"saliency cache index out of range 0..{self.layout.n - 1}")
        blk, row = np.divmod(idx, self.layout.block)
        for k in np.unique(blk).tolist():
            self._verify(int(k))
        scales, maps = self._open()
        out = maps[blk, row].astype(np.float32) * scales[blk, row][:, None, None, None]
        return torch.from_numpy(out)

    def _open(self) -> tuple[np.ndarray, np.ndarray]:
        if self._views is None:
            lay = self.layout
            mm = np.memmap(self.path, dtype=np.uint8, mode="r")
            scales = np.ndarray((lay.n_blocks, lay.block), np.float32, buffer=mm, offset=B.HEADER,
                                strides=(lay.stride, 4))
            maps = np.ndarray((lay.n_blocks, lay.block, 1, lay.h, lay.w), np.float16, buffer=mm,
                              offset=B.HEADER + lay.block * 4,
                              strides=(lay.stride, lay.map_values * 2, lay.map_values * 2, lay.w * 2, 2))
            self._views = (scales, maps)
        return self._views

    def _read_checked(self, k: int) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        B.check(self.layout, k, B.read_raw(self._fd, self.layout, k))

    def _verify(self, k: int) -> None:
        if k in self._verified:
            return
        try:
            self._read_checked(k)
        except B.BadBlock as e:
            if self._repair is None or os.getpid() != self._owner:
                with open(bad_path(self.path), "a") as f:
                    f.write(f"{k}\n")
                raise UserError(f"saliency cache {self.path}: {e}; the block is marked for rebuilding "
                                "(run again: it is rebuilt before training)") from None
            log.warning("saliency cache %s: %s; rebuilding it", self.path.name, e)
            self._repair(k)
            self._read_checked(k)  # a block that still fails raises BadBlock: never used
        self._verified.add(k)

    # ------------------------------------------------------------------ workers
    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the file
        state = dict(self.__dict__)
        state.update(_fd=None, _views=None, _repair=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __del__(self) -> None:
        fd = self.__dict__.get("_fd")
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path}, stored={self.shape}, {self.status})"
