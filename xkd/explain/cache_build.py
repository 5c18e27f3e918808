"""Building a saliency cache, sharded over DDP ranks and resumable (issue 18).

Every rank calls :func:`plan_and_build` (a collective under ``torch.distributed``). Rank 0 reads
the index and decides in O(1) (hit, resume, repair or new build), creating the sparse file when
needed; the decision is broadcast. A build gives rank r the blocks k with k % world == r, and
each block is explained in batches drawn from that block only, so the bytes of every block,
and hence of the file, do not depend on the number of ranks (explainers map each image on its
own). Each rank writes its blocks into the one file (``pwrite``) and skips those already valid
(resume after a kill, repair of blocks found corrupt); ranks then meet at one barrier, which
waits at most about one block's work since the shares are balanced, and rank 0 marks the
index entry complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from xkd.errors import UserError
from xkd.explain import blockfile as B
from xkd.explain import storage
from xkd.explain.cache_store import (bad_path, entry_problem, log, read_bad, read_index,
                                     teacher_hash, write_index)
from xkd.explain.guards import model_guard
from xkd.explain.targets import resolve_targets


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast(obj: Any) -> Any:
    if _rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _same_slot(entry: dict[str, Any], slot: dict[str, Any]) -> bool:
    return all(entry.get(k) == v for k, v in slot.items())


def _plan(root: Path, key: str, slot: dict[str, Any], entry: dict[str, Any],
          layout: B.Layout) -> dict[str, Any]:
    """Rank 0: hit, or what to build (``blocks`` None = every block not yet valid)."""
    caches = read_index(root)
    old = caches.get(key)
    problem = entry_problem(root, key, old)
    path = root / entry["file"]
    if not problem:
        bad = read_bad(path)
        if not bad:
            return {"status": "loaded", "entry": old, "reason": ""}
        return {"status": "built", "entry": old, "blocks": bad, "check": False,
                "reason": f"repairing block(s) {bad} found corrupt when read"}
    if (old is not None and old.get("format") == B.FORMAT and not old.get("complete")
            and not B.header_problem(path, layout, key)):
        return {"status": "built", "entry": old, "blocks": None, "check": True,
                "reason": "incomplete (an earlier build was interrupted); resuming"}
    stale = [k for k, e in caches.items() if k != key and _same_slot(e, slot)]
    if problem == "missing" and stale:
        problem = "stale (built for other teacher weights)"
    same = ("dataset_identity", "explainer", "target")  # an older format's cache of these maps
    stale += [k for k, e in caches.items() if k != key and e.get("format") != B.FORMAT
              and all(e.get(f) == slot[f] for f in same)]
    for k in stale:  # a run's old teacher: its maps can never be used again
        old_file = root / str(caches.pop(k).get("file", ""))
        old_file.unlink(missing_ok=True)
        bad_path(old_file).unlink(missing_ok=True)
    B.create(path, layout, key)
    bad_path(path).unlink(missing_ok=True)
    caches[key] = entry
    write_index(root, caches)
    return {"status": "built", "entry": entry, "blocks": None, "check": False, "reason": problem}


def plan_and_build(root: str | os.PathLike, teacher: nn.Module, dataset: Dataset, explainer: Any,
                   spec: dict[str, Any], target_rule: str, dataset_identity: str, device: Any,
                   batch_size: int, num_workers: int, progress: bool | None,
                   block: int | None = None, extra_settings: dict[str, Any] | None = None
                   ) -> tuple[str, dict[str, Any], str, str, Callable[[int], None]]:
    """(key, entry, status, reason, repair): the cache for this teacher, data and explainer."""
    root = Path(root)
    rank, world = _rank_world()
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("XKD_NO_PROGRESS")
    first = dataset[0]["image"]
    h, w = (int(v) for v in spec["size"])
    layout = B.Layout(len(dataset), h, w, block or min(B.default_block(h, w), max(1, len(dataset))))
    if not dataset_identity:
        log.warning("saliency cache: empty dataset identity; the key relies on size and shape only")
    settings = {**explainer.settings(), **(extra_settings or {})}
    t_hash = teacher_hash(teacher)
    slot = {"dataset_identity": dataset_identity, "explainer": settings, "target": target_rule,
            "image_shape": list(first.shape), "n": len(dataset), "storage": spec}
    material = json.dumps({"teacher_hash": t_hash, "format": B.FORMAT, "layout": layout.as_dict(),
                           **slot}, sort_keys=True)
    key = hashlib.sha256(material.encode()).hexdigest()
    entry = {"file": f"{explainer.method}-{key[:16]}.xkdsal", "format": B.FORMAT, "dtype": "float16",
             "layout": layout.as_dict(), "shape": [layout.n, 1, h, w], "complete": False,
             "teacher_hash": t_hash, **slot}
    plan = _broadcast(_plan(root, key, slot, entry, layout) if rank == 0 else None)
    path = root / plan["entry"]["file"]

    def fill(blocks: list[int], check: bool, show: bool = False) -> int:
        return _fill(path, layout, blocks, check, teacher, explainer, spec, dataset, target_rule,
                     device, batch_size, num_workers, show)

    if plan["status"] == "loaded":
        return key, plan["entry"], "loaded", "", lambda k: fill([k], False)
    if rank == 0 and plan["reason"] == "missing":  # the normal first use: not a problem
        log.info("saliency cache %s: explaining %d training images with %s on %d rank(s) (once; "
                 "later runs with this teacher reuse it)", key[:12], layout.n, explainer.method, world)
    elif rank == 0:
        log.warning("saliency cache %s: %s; building %d maps with %s on %d rank(s)", key[:12],
                    plan["reason"], layout.n, explainer.method, world)
    t0 = time.perf_counter()
    todo = plan["blocks"] if plan["blocks"] is not None else list(range(layout.n_blocks))
    done = fill([k for k in todo if k % world == rank], plan["check"], progress and rank == 0)
    if world > 1:
        dist.barrier()
    entry = dict(plan["entry"])
    if rank == 0:
        entry.update(complete=True, bytes=path.stat().st_size, **{
            "bytes_per_map": B.summary(layout)["bytes_per_map"],
            "build_seconds": round(time.perf_counter() - t0, 3), "ranks": world})
        caches = read_index(root)
        caches[key] = entry
        write_index(root, caches)
        bad_path(path).unlink(missing_ok=True)
    entry["complete"] = True
    log.info("saliency cache %s: rank %d explained %d block(s)", key[:12], rank, done)
    return key, entry, "built", plan["reason"], lambda k: fill([k], False)


def _fill(path: Path, layout: B.Layout, blocks: list[int], check: bool, teacher: nn.Module,
          explainer: Any, spec: dict[str, Any], dataset: Dataset, rule: str, device: Any,
          batch_size: int, num_workers: int, progress: bool) -> int:
    """Explain and write ``blocks`` (skipping already valid ones when ``check``); returns how many."""
    if device is None:
        p = next(teacher.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    fd = os.open(path, os.O_RDWR)
    try:
        todo = [k for k in blocks if not (check and B.block_ok(fd, layout, k))]
        batches, owner = [], []
        for k in todo:
            rows = list(layout.rows(k))
            for i in range(0, len(rows), batch_size):
                batches.append(rows[i:i + batch_size])
                owner.append(k)
        if not batches:
            return 0
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                            pin_memory=torch.device(device).type == "cuda")
        bar = tqdm(total=sum(len(b) for b in batches), disable=not progress, leave=False, unit="map",
                   desc=f"saliency cache ({explainer.method})")
        parts: list[np.ndarray] = []
        for b, (batch, k) in enumerate(zip(loader, owner)):
            x = batch["image"].to(device)
            idx = batch.get("index")
            if idx is not None and idx.cpu().tolist() != batches[b]:
                raise UserError(f"saliency cache: dataset sample {batches[b][0]} carries index "
                                f"{int(idx[0])}; the cache needs sample['index'] == its position")
            logits = None
            if rule != "label":
                with torch.no_grad(), model_guard(teacher):
                    logits = teacher(x)
            t = resolve_targets(rule, batch.get("label"), teacher_logits=logits, model_logits=logits)
            maps = storage.compute(explainer, spec, x, t.to(device)).cpu().numpy()
            if not np.isfinite(maps).all():
                raise UserError("explain: saliency maps are not finite; check the teacher and "
                                "explain.params")
            parts.append(maps)
            bar.update(len(x))
            if b + 1 == len(batches) or owner[b + 1] != k:
                B.write(fd, layout, k, np.concatenate(parts))
                parts = []
        bar.close()
        os.fsync(fd)
        return len(todo)
    finally:
        os.close(fd)
