"""On-disk cache of a teacher's saliency maps for a whole split (DESIGN sections 3.3 and 5).

Maps of the *un-augmented* images are computed once and stored as a float16 ``.npy`` file
(N,1,H,W) under ``RUN/saliency/``, memory-mapped on load; joint augmentation then moves each map
with its image (seed_methods.md section 7.4, "precompute maps for un-augmented images"). The key
hashes the teacher's weights (every state_dict tensor's bytes), the dataset identity and size, the
explainer settings and the target rule. ``index.json`` (atomic, versioned) records per key the
file, shape, dtype, byte size, sha256 of the whole file and whether the build completed. A cache
whose key, size, checksum or shape does not match is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from xkd.config import ExplainConfig
from xkd.errors import UserError
from xkd.explain.factory import build_from_config
from xkd.explain.guards import model_guard
from xkd.explain.targets import resolve_targets
from xkd.io import read_json, write_json

log = logging.getLogger(__name__)
INDEX = "index.json"
F16_MAX = float(np.finfo(np.float16).max)


def teacher_hash(model: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every state_dict tensor."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_index(root: Path) -> dict[str, Any]:
    if not (root / INDEX).is_file():
        return {}
    try:
        caches = read_json(root / INDEX).get("caches", {})
        return caches if isinstance(caches, dict) else {}
    except UserError as e:
        log.warning("saliency cache index unreadable (%s); starting a new one", e)
        return {}


def _write_index(root: Path, caches: dict[str, Any]) -> None:
    write_json(root / INDEX, {"caches": caches})


def _problem(root: Path, entry: dict[str, Any] | None, shape: tuple[int, ...] | None) -> str:
    """Why ``entry`` cannot be used ('' when it can): checks completeness, size, checksum, shape."""
    if entry is None:
        return "missing"
    if not entry.get("complete"):
        return "incomplete (an earlier build was interrupted)"
    path = root / str(entry.get("file", ""))
    if not path.is_file():
        return f"file {path.name} missing"
    if path.stat().st_size != entry.get("bytes"):
        return f"file {path.name} truncated or resized ({path.stat().st_size} != {entry.get('bytes')} bytes)"
    if file_sha256(path) != entry.get("sha256"):
        return f"file {path.name} corrupt (sha256 mismatch)"
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        return f"file {path.name} unreadable ({e})"
    if tuple(arr.shape) != tuple(entry.get("shape", ())) or (shape is not None and arr.shape != shape):
        return f"shape {tuple(arr.shape)} does not match {shape or tuple(entry.get('shape', ()))}"
    if arr.dtype != np.float16:
        return f"dtype {arr.dtype} is not float16"
    return ""


class SaliencyCache:
    """Read-only view of one cache: ``cache[i]`` -> (1,H,W) float32 tensor, ``len(cache)``."""

    def __init__(self, root: str | os.PathLike, key: str, entry: dict[str, Any],
                 status: str = "loaded", reason: str = "") -> None:
        self.root, self.key, self.entry = Path(root), key, entry
        self.path = self.root / entry["file"]
        self.status, self.reason = status, reason
        self.array: np.ndarray = np.load(self.path, mmap_mode="r")

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array[int(i)], dtype=np.float32))

    def batch(self, indices: torch.Tensor | list[int]) -> torch.Tensor:
        """Maps (B,1,H,W) float32 for dataset indices."""
        idx = np.asarray(torch.as_tensor(indices).cpu().numpy(), dtype=np.int64)
        return torch.from_numpy(np.array(self.array[idx], dtype=np.float32))

    @property
    def teacher_hash(self) -> str:
        return str(self.entry.get("teacher_hash", ""))

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the memmap
        state = dict(self.__dict__)
        state.pop("array")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.array = np.load(self.path, mmap_mode="r")

    def __repr__(self) -> str:
        return f"SaliencyCache({self.path}, shape={tuple(self.array.shape)}, {self.status})"

    # ------------------------------------------------------------------ build / load
    @classmethod
    def build_or_load(cls, root: str | os.PathLike, teacher: nn.Module, dataset: Dataset,
                      explain_cfg: ExplainConfig, dataset_identity: str,
                      device: str | torch.device | None = None, batch_size: int = 64,
                      num_workers: int = 0, progress: bool | None = None) -> "SaliencyCache":
        """Load the cache for this (teacher, dataset, explainer, target) or (re)build it.

        Missing, stale (other teacher weights), incomplete, truncated or corrupt caches are rebuilt;
        ``status`` ('loaded'|'built') and ``reason`` say which. Call on one process (rank 0) first.
        ``progress=None`` shows a tqdm bar on a terminal unless ``XKD_NO_PROGRESS`` is set.
        """
        if progress is None:
            progress = sys.stderr.isatty() and not os.environ.get("XKD_NO_PROGRESS")
        root = Path(root)
        explainer = build_from_config(explain_cfg, teacher)
        first = dataset[0]["image"]
        n = len(dataset)
        shape = (n, 1, int(first.shape[-2]), int(first.shape[-1]))
        if not dataset_identity:
            log.warning("saliency cache: empty dataset identity; the key relies on size and shape only")
        settings = explainer.settings()
        if explain_cfg.method == "smoothgrad":  # noise chunks follow the memory knob
            settings["max_batch"] = explain_cfg.max_batch
        t_hash = teacher_hash(teacher)
        slot = {"dataset_identity": dataset_identity, "explainer": settings,
                "target": explain_cfg.target, "shape": list(shape), "image_shape": list(first.shape)}
        material = json.dumps({"teacher_hash": t_hash, **slot}, sort_keys=True)
        key = hashlib.sha256(material.encode()).hexdigest()

        caches = _read_index(root)
        reason = _problem(root, caches.get(key), shape)
        if not reason:
            log.info("saliency cache hit %s (%s)", key[:12], caches[key]["file"])
            return cls(root, key, caches[key], "loaded")
        stale = [k for k, e in caches.items() if k != key and _same_slot(e, slot)]
        if reason == "missing" and stale:
            reason = "stale (built for other teacher weights)"
        log.warning("saliency cache %s: %s; building %d maps with %s", key[:12], reason, n,
                    explain_cfg.method)
        for k in stale:  # a run's old teacher: its maps can never be used again
            old_file = root / str(caches.pop(k).get("file", ""))
            if old_file.is_file():
                old_file.unlink()
        entry = {"file": f"{explain_cfg.method}-{key[:16]}.npy", "shape": list(shape),
                 "dtype": "float16", "complete": False, "teacher_hash": t_hash, **slot}
        caches[key] = entry
        _write_index(root, caches)
        t0 = time.perf_counter()
        _compute(root / entry["file"], teacher, explainer, dataset, explain_cfg.target, shape,
                 device, batch_size, num_workers, progress)
        entry.update(complete=True, bytes=(root / entry["file"]).stat().st_size,
                     sha256=file_sha256(root / entry["file"]),
                     build_seconds=round(time.perf_counter() - t0, 3))
        caches = _read_index(root)
        caches[key] = entry
        _write_index(root, caches)
        return cls(root, key, entry, "built", reason)


def _same_slot(entry: dict[str, Any], slot: dict[str, Any]) -> bool:
    return all(entry.get(k) == v for k, v in slot.items())


def _compute(path: Path, teacher: nn.Module, explainer: Any, dataset: Dataset, rule: str,
             shape: tuple[int, ...], device: str | torch.device | None, batch_size: int,
             num_workers: int, progress: bool) -> None:
    """Explain every sample (un-augmented, in order) into a new file, then rename it into place."""
    if device is None:
        p = next(teacher.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    tmp = path.with_name(f".{path.name}.building")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    pos = 0
    try:
        for batch in tqdm(loader, desc=f"saliency cache ({explainer.method})", disable=not progress,
                          leave=False):
            x = batch["image"].to(device)
            logits = None
            if rule != "label":
                with torch.no_grad(), model_guard(teacher):
                    logits = teacher(x)
            t = resolve_targets(rule, batch.get("label"), teacher_logits=logits, model_logits=logits)
            maps = explainer.explain(x, t.to(device)).cpu().numpy()
            if not np.isfinite(maps).all() or maps.max(initial=0.0) > F16_MAX:
                raise UserError("explain: saliency maps are not finite or exceed float16 range; "
                                "use explain.params.normalize 'max' or 'sum'")
            idx = batch.get("index")
            rows = np.arange(pos, pos + len(x)) if idx is None else idx.cpu().numpy().astype(np.int64)
            if rows.min() < 0 or rows.max() >= shape[0]:
                raise UserError(f"dataset sample index {int(rows.max())} outside 0..{shape[0] - 1}")
            arr[rows] = maps.astype(np.float16)
            pos += len(x)
        arr.flush()
        del arr
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def load_existing(root: str | os.PathLike, key: str, teacher: nn.Module | None = None) -> SaliencyCache:
    """Open a cache the user points to by key (or a unique key prefix); never rebuilds.

    Raises :class:`UserError` when the key is unknown, the file is bad, or ``teacher`` is given
    and its weights differ from the ones the cache was built for.
    """
    root = Path(root)
    caches = _read_index(root)
    hits = [k for k in caches if k == key or (len(key) >= 8 and k.startswith(key))]
    if len(hits) != 1:
        what = "no" if not hits else "several"
        raise UserError(f"{what} saliency cache with key '{key}' in {root}; available: "
                        f"{', '.join(k[:16] for k in caches) or 'none'}")
    k = hits[0]
    entry = caches[k]
    if teacher is not None:
        mine = teacher_hash(teacher)
        if entry.get("teacher_hash") != mine:
            raise UserError(f"saliency cache {k[:12]} in {root}: this cache was built for another teacher (weights hash "
                            f"{str(entry.get('teacher_hash'))[:12]}, this teacher {mine[:12]}); "
                            "rebuild it or point to the matching teacher checkpoint")
    problem = _problem(root, entry, None)
    if problem:
        raise UserError(f"saliency cache {k[:12]} in {root} cannot be used: {problem}")
    return SaliencyCache(root, k, entry, "loaded")
