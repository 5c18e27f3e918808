"""The saliency cache's file format: fixed-size blocks of maps, each with its own checksum.

::

    header   4096 bytes: MAGIC + JSON {format, n, h, w, block, key}, space-padded
    block k  at 4096 + k * stride:  scales float32 (block,) | maps float16 (block,1,h,w) | trailer
    trailer  32 bytes: b"XKDBLOCK" | k (int64) | blake2b-128 digest of the block's bytes
    stride   payload + trailer rounded up to a multiple of 4096 (page-aligned blocks)

A map is stored divided by a per-map power of two (``scales``), so float16 neither overflows nor
underflows whatever the map's range, and a map already in [0, 1] (scale 1) is stored exactly as
a plain float16 cast would store it. The last block is padded to the full stride. A block whose
trailer is absent (the file is allocated sparse, so an unwritten block reads as zeros) or whose
digest does not match is *not written*: builds skip valid blocks (resume after a kill) and a
reader never uses an invalid one. Opening needs only the header and the file size: O(1) in N.
Every block is written with one ``pwrite`` at its own offset, so DDP ranks fill disjoint blocks
of one file concurrently (a shared file system across nodes).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"XKDSAL2\n"
HEADER = 4096
TRAILER = struct.Struct("<8sq16s")
BLOCK_MAGIC = b"XKDBLOCK"
FORMAT = 2
PAGE = 4096


class BadBlock(Exception):
    """A block that is not written or whose checksum does not match."""


@dataclass(frozen=True)
class Layout:
    """Geometry of one cache file: ``n`` maps of ``h`` x ``w`` in blocks of ``block`` maps."""

    n: int
    h: int
    w: int
    block: int

    @property
    def n_blocks(self) -> int:
        return max(1, math.ceil(self.n / self.block))

    @property
    def map_values(self) -> int:
        return self.h * self.w

    @property
    def payload(self) -> int:
        return self.block * 4 + self.block * self.map_values * 2

    @property
    def stride(self) -> int:
        """Payload + trailer, rounded up to whole 4 KiB pages: ranks on different nodes never
        write into the same page of a shared file."""
        return -(-(self.payload + TRAILER.size) // PAGE) * PAGE

    @property
    def file_bytes(self) -> int:
        return HEADER + self.n_blocks * self.stride

    def offset(self, k: int) -> int:
        return HEADER + k * self.stride

    def rows(self, k: int) -> range:
        return range(k * self.block, min(self.n, (k + 1) * self.block))

    def as_dict(self) -> dict[str, int]:
        return {"n": self.n, "h": self.h, "w": self.w, "block": self.block}


def default_block(h: int, w: int, target_bytes: int = 256 * 1024) -> int:
    """Maps per block: about ``target_bytes`` per block, between 1 and 4096 maps."""
    return int(min(4096, max(1, target_bytes // (4 + 2 * h * w))))


def _header(layout: Layout, key: str) -> bytes:
    body = json.dumps({"format": FORMAT, **layout.as_dict(), "key": key}, sort_keys=True).encode()
    raw = MAGIC + body + b"\n"
    if len(raw) > HEADER:
        raise ValueError("cache header too long")
    return raw.ljust(HEADER, b" ")


def create(path: Path, layout: Layout, key: str) -> None:
    """A new, sparse file: the header, then ``n_blocks`` unwritten blocks (zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new")
    with open(tmp, "wb") as f:
        f.write(_header(layout, key))
        f.truncate(layout.file_bytes)
    os.replace(tmp, path)


def header_problem(path: Path, layout: Layout, key: str) -> str:
    """Why ``path`` is not a cache file of this layout and key ('' when it is); reads 4 KiB."""
    if not path.is_file():
        return f"file {path.name} missing"
    size = path.stat().st_size
    if size != layout.file_bytes:
        return f"file {path.name} truncated or resized ({size} != {layout.file_bytes} bytes)"
    with open(path, "rb") as f:
        head = f.read(HEADER)
    if head != _header(layout, key):
        return f"file {path.name} has another header (format, shape or key)"
    return ""


def encode(layout: Layout, k: int, maps: np.ndarray) -> bytes:
    """Block ``k`` of float32 maps (m,1,h,w), m = len(rows(k)): payload + trailer."""
    m = len(layout.rows(k))
    if maps.shape != (m, 1, layout.h, layout.w):
        raise ValueError(f"block {k}: maps of shape {maps.shape}, expected {(m, 1, layout.h, layout.w)}")
    peak = maps.reshape(m, -1).max(axis=1, initial=0.0) if m else np.zeros(0)
    scales = np.ones(layout.block, dtype=np.float32)
    pos = peak > 0
    scales[:m][pos] = np.exp2(np.floor(np.log2(peak[pos]))).astype(np.float32)
    data = np.zeros((layout.block, 1, layout.h, layout.w), dtype=np.float16)
    data[:m] = (maps / scales[:m, None, None, None]).astype(np.float16)
    payload = scales.tobytes() + data.tobytes()
    return payload + TRAILER.pack(BLOCK_MAGIC, k, hashlib.blake2b(payload, digest_size=16).digest())


def write(fd: int, layout: Layout, k: int, maps: np.ndarray) -> None:
    """Write block ``k`` in place (one ``pwrite``); other blocks are untouched."""
    raw = encode(layout, k, maps)
    done = os.pwrite(fd, raw, layout.offset(k))
    if done != len(raw):
        raise OSError(f"short write of saliency cache block {k} ({done} of {len(raw)} bytes)")


def read_raw(fd: int, layout: Layout, k: int) -> bytes:
    raw = os.pread(fd, layout.stride, layout.offset(k))
    if len(raw) != layout.stride:
        raise BadBlock(f"block {k} truncated")
    return raw


def check(layout: Layout, k: int, raw: bytes) -> None:
    """Raise :class:`BadBlock` unless ``raw`` is block ``k`` with a matching checksum."""
    magic, idx, digest = TRAILER.unpack(raw[layout.payload:layout.payload + TRAILER.size])
    if magic != BLOCK_MAGIC or idx != k:
        raise BadBlock(f"block {k} not written")
    if hashlib.blake2b(raw[:layout.payload], digest_size=16).digest() != digest:
        raise BadBlock(f"block {k} corrupt (checksum mismatch)")


def decode(layout: Layout, k: int, raw: bytes) -> np.ndarray:
    """Float32 maps (m,1,h,w) of a checked block."""
    m = len(layout.rows(k))
    scales = np.frombuffer(raw, dtype=np.float32, count=layout.block)[:m]
    data = np.frombuffer(raw, dtype=np.float16, offset=layout.block * 4,
                         count=layout.block * layout.map_values)
    data = data.reshape(layout.block, 1, layout.h, layout.w)[:m]
    return data.astype(np.float32) * scales[:, None, None, None]


def block_ok(fd: int, layout: Layout, k: int) -> bool:
    try:
        check(layout, k, read_raw(fd, layout, k))
        return True
    except BadBlock:
        return False


def summary(layout: Layout) -> dict[str, Any]:
    """What the index records about the layout (bytes per map included)."""
    return {**layout.as_dict(), "n_blocks": layout.n_blocks, "file_bytes": layout.file_bytes,
            "bytes_per_map": round(layout.file_bytes / max(1, layout.n), 1)}
