"""PyTorch DDP when launched by ``torchrun`` (DESIGN section 6).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` reads them
and starts the process group (``nccl`` on CUDA, ``gloo`` on CPU). The engine then wraps the
distiller (whose module tree is exactly the trainable part: the teacher is kept out of it) in
``DistributedDataParallel``, shards batches with a ``DistributedSampler`` and lets only rank 0
write files. Training-loss means are all-reduced across ranks; validation runs on rank 0 only and
its metrics are broadcast, so every rank returns the same result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from xkd.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``world_size`` 1 means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device | str | None = None, timeout_s: int = 1800) -> DistInfo:
    """Start the process group when launched by ``torchrun`` (idempotent); else a 1-process info.

    The backend is ``nccl`` when ``device`` is CUDA (or ``None``/``auto`` with a GPU present), ``gloo``
    otherwise. With CUDA, this process's GPU is set to ``LOCAL_RANK``. ``timeout_s`` is the
    process-group timeout (``distributed.timeout_minutes`` in the experiment file): a collective
    that waits longer fails the job instead of hanging.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo()
    if not dist.is_available():
        raise UserError("launched by torchrun but this PyTorch build has no torch.distributed")
    dev = str(device) if device is not None else "auto"
    use_cuda = dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(seconds=timeout_s))
    return current()


def current() -> DistInfo:
    """The process group as it is now (a 1-process info when none is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                    backend=str(dist.get_backend()))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 (and whenever no process group is running): the only writer of files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks in place (identity without DDP)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` is true on every rank (used to stop all ranks together on NaN)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (e.g. BatchNorm running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step of an epoch each
    rank holds statistics updated with its own shard; this makes the saved state identical.
    """
    if is_distributed():
        for b in module.buffers():
            dist.broadcast(b.data, src=src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity without DDP)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    """Destroy the process group if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
