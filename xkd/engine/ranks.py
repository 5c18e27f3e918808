"""Rank coordination beyond the training step (DESIGN section 6: only rank 0 writes).

* :func:`wait_for_main`: the ranks meet after rank 0 has written a stage's files (a barrier). It
  waits at most the process-group timeout (``distributed.timeout_minutes``); past it, the waiting
  rank stops with one line naming the stage and the setting, instead of hanging or printing a
  backend traceback.
* :func:`all_gather_rows`: every rank's rows of per-sample updates (variable batch lengths), in
  rank order, so that state indexed by dataset position (HKD's memory banks, introspective's
  target cache) takes the updates of the whole global batch on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from xkd.engine.distributed import is_distributed
from xkd.errors import UserError


def wait_for_main(what: str) -> None:
    """Barrier after rank 0's writes of ``what``; one :class:`UserError` line past the timeout."""
    if not is_distributed():
        return
    try:
        dist.barrier()
    except RuntimeError as e:  # gloo: timeout or a peer that went away
        first = (str(e).strip().splitlines() or ["?"])[0][:160]
        raise UserError(f"rank {dist.get_rank()}: waited for rank 0 to finish {what} past the "
                        f"process-group timeout ({first}); raise distributed.timeout_minutes if "
                        "that stage is just slow, or look at rank 0's error") from None


def all_gather_rows(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
    """For tensors sharing dim 0 (this rank's rows), each one's rows from every rank, in rank order.

    Returns one list per input with ``world_size`` entries (rank r's rows at position r); without a
    process group, ``([t],)`` per tensor. Lengths may differ between ranks (padded for the gather).
    """
    if not is_distributed():
        return tuple([t] for t in tensors)
    n = tensors[0].shape[0]
    world = dist.get_world_size()
    dev = tensors[0].device
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=dev))
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    out: list[list[torch.Tensor]] = []
    for t in tensors:
        t = t.detach().contiguous()
        pad = t.new_zeros((top,) + tuple(t.shape[1:]))
        pad[:n] = t
        parts = [torch.empty_like(pad) for _ in range(world)]
        dist.all_gather(parts, pad)
        out.append([p[:c] for p, c in zip(parts, counts)])
    return tuple(out)
