"""On-disk cache of a teacher's saliency maps for a whole split (DESIGN sections 3.3 and 5; issue 18).

Maps of the *un-augmented* images are computed once and stored under ``RUN/saliency/`` at a
storage resolution (``explain.storage_size``, :mod:`xkd.explain.storage`: by default Grad-CAM's
own layer size or the finest level the consumer reads) in a block file with one checksum per
block (:mod:`xkd.explain.blockfile`). Reading brings a map back to the image size, and joint
augmentation then moves it with its image (seed_methods.md section 7.4). The key hashes the
teacher's weights (every state_dict tensor's bytes), the dataset identity and size, the
explainer settings, the target rule and the storage layout. ``index.json`` (atomic, versioned)
records per key the file, layout, storage and whether the build completed. Opening is O(1) in
the cache's size; blocks are verified when first read, and a stale, incomplete or corrupt cache
(or block) is rebuilt, never used. Builds are sharded over DDP ranks and resume after a kill
(:mod:`xkd.explain.cache_build`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from xkd.config import ExplainConfig
from xkd.errors import UserError
from xkd.explain import storage
from xkd.explain.cache_build import plan_and_build
from xkd.explain.cache_store import CacheReader, entry_problem, read_index, teacher_hash
from xkd.explain.factory import build_from_config

__all__ = ["SaliencyCache", "load_existing", "teacher_hash"]


class SaliencyCache(CacheReader):
    """Read-only view of one cache: ``cache[i]`` -> (1,H,W) float32 at the image size,
    ``cache.stored(indices)`` -> (B,1,h,w) at the storage size, ``len(cache)``."""

    @classmethod
    def build_or_load(cls, root: str | os.PathLike, teacher: nn.Module, dataset: Dataset,
                      explain_cfg: ExplainConfig, dataset_identity: str,
                      device: str | torch.device | None = None, batch_size: int = 64,
                      num_workers: int = 0, progress: bool | None = None,
                      read_size: tuple[int, int] | None = None,
                      block: int | None = None) -> "SaliencyCache":
        """Load the cache for this (teacher, dataset, explainer, target, storage) or (re)build it.

        Missing, stale (other teacher weights), incomplete or format-changed caches are (re)built,
        interrupted builds resumed, blocks found corrupt rebuilt; ``status`` ('loaded'|'built')
        and ``reason`` say which. Under ``torch.distributed`` every rank calls this (collective)
        and explains its share. ``read_size``: the finest size the consumer reads (``storage_size
        'auto'``); ``block``: maps per block (default ~256 KiB per block). ``progress=None``
        shows a tqdm bar on rank 0 on a terminal unless ``XKD_NO_PROGRESS`` is set.
        """
        explainer = build_from_config(explain_cfg, teacher)
        spec = storage.resolve(explain_cfg.storage_size, explainer, dataset[0]["image"], read_size)
        extra = {"max_batch": explain_cfg.max_batch} if explain_cfg.method == "smoothgrad" else None
        key, entry, status, reason, repair = plan_and_build(
            root, teacher, dataset, explainer, spec, explain_cfg.target, dataset_identity, device,
            batch_size, num_workers, progress, block, extra)
        return cls(root, key, entry, status, reason, repair)


def load_existing(root: str | os.PathLike, key: str, teacher: nn.Module | None = None) -> SaliencyCache:
    """Open a cache the user points to by key (or a unique key prefix); never rebuilds.

    Raises :class:`UserError` when the key is unknown, the file is bad, or ``teacher`` is given
    and its weights differ from the ones the cache was built for. Blocks are verified when read.
    """
    root = Path(root)
    caches = read_index(root)
    hits = [k for k in caches if k == key or (len(key) >= 8 and k.startswith(key))]
    if len(hits) != 1:
        what = "no" if not hits else "several"
        raise UserError(f"{what} saliency cache with key '{key}' in {root}; available: "
                        f"{', '.join(k[:16] for k in caches) or 'none'}")
    k = hits[0]
    entry: dict[str, Any] = caches[k]
    if teacher is not None:
        mine = teacher_hash(teacher)
        if entry.get("teacher_hash") != mine:
            raise UserError(f"saliency cache {k[:12]} in {root}: this cache was built for another teacher (weights hash "
                            f"{str(entry.get('teacher_hash'))[:12]}, this teacher {mine[:12]}); "
                            "rebuild it or point to the matching teacher checkpoint")
    problem = entry_problem(root, k, entry)
    if problem:
        raise UserError(f"saliency cache {k[:12]} in {root} cannot be used: {problem}")
    return SaliencyCache(root, k, entry, "loaded")
