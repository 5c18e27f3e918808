"""HKD's memory banks and negative sampling (reference notes section 3.2).

* :class:`MemoryBank`: M_s, M_t ∈ R^{N×d} (N = training-set size), initialised uniformly in
  ±1/√(d/3); after each step M[i] ← N(m·M[i] + (1 − m)·e[i]) with m = 0.9 for the batch's
  dataset indices i. The banks store the pre-GNN embeddings. Under DDP the rows of every rank
  are all-gathered and applied on each rank (:func:`xkd.engine.ranks.all_gather_rows`).
* :func:`sample_negatives`: for each anchor, K training indices drawn uniformly from the samples
  of *other* classes (never the anchor's own), without replacement unless the pool is smaller
  than K.
* :func:`negative_scores`: ⟨a_b, M[n_bk]⟩ for all b, k.
* :func:`dataset_labels`: the label of every sample of a split, by sample index (what the
  pipeline passes as ``DistillContext.extras["labels"]``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from xkd.engine.ranks import all_gather_rows
from xkd.errors import UserError


class MemoryBank(nn.Module):
    """Student and teacher banks as buffers (saved with the checkpoint for an exact resume)."""

    def __init__(self, size: int, dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        stdv = 1.0 / math.sqrt(dim / 3.0)
        self.momentum = float(momentum)
        self.register_buffer("student", torch.rand(size, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("teacher", torch.rand(size, dim).mul_(2 * stdv).add_(-stdv))

    @torch.no_grad()
    def update(self, index: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        """M[i] ← N(m·M[i] + (1 − m)·e[i]) for both banks. Under DDP every rank applies the rows of
        every rank (gathered, in rank order), so the banks stay equal to the union of the updates."""
        for idx, s, t in zip(*all_gather_rows(index, e_s.detach(), e_t.detach())):
            self._apply_rows(idx, s, t)

    def _apply_rows(self, index: torch.Tensor, e_s: torch.Tensor, e_t: torch.Tensor) -> None:
        m = self.momentum
        for bank, e in ((self.student, e_s), (self.teacher, e_t)):
            new = F.normalize(m * bank[index] + (1.0 - m) * e.to(bank.dtype), dim=1)
            bank.index_copy_(0, index, new)


def sample_negatives(labels: torch.Tensor, anchor_labels: torch.Tensor, k: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,K) indices into ``labels`` (N,), each row drawn from samples of another class."""
    allowed = labels[None, :] != anchor_labels[:, None]
    avail = allowed.sum(dim=1)
    if bool((avail == 0).any()):
        raise UserError("hkd: a batch sample's class is the only class in the training labels; "
                        "negatives must come from other classes")
    out = torch.empty(len(anchor_labels), k, dtype=torch.long, device=labels.device)
    weights = allowed.float()
    for repl in (False, True):
        rows = (avail < k) if repl else (avail >= k)
        if bool(rows.any()):
            out[rows] = torch.multinomial(weights[rows], k, replacement=repl, generator=generator)
    return out


def negative_scores(anchor: torch.Tensor, bank: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """(B,K) dot products ⟨anchor_b, bank[neg_bk]⟩. When K ≥ N it scores the whole bank once and
    gathers (cheaper than materialising B×K×d rows); otherwise it gathers the rows. Either way
    the bank rows enter the graph as a copy, so the bank may be updated in place afterwards."""
    if neg.shape[1] >= bank.shape[0]:
        return (anchor @ bank.to(anchor.dtype, copy=True).t()).gather(1, neg)
    return torch.einsum("bd,bkd->bk", anchor, bank[neg].to(anchor.dtype))


def dataset_labels(ds: Dataset) -> torch.Tensor | None:
    """Labels (N,) of a split in sample-index order (fast paths for the built-in splits), or
    ``None`` where the samples cannot be read for labels."""
    if isinstance(ds, Subset):
        base_labels = dataset_labels(ds.dataset)
        return None if base_labels is None else base_labels[torch.as_tensor(list(ds.indices), dtype=torch.long)]
    labels: Any = getattr(ds, "labels", None)
    if torch.is_tensor(labels) and len(labels) == len(ds):  # type: ignore[arg-type]
        return labels
    base, idx = getattr(ds, "base", None), getattr(ds, "indices", None)
    targets = getattr(base, "targets", None) if base is not None else None
    if targets is None and base is not None:
        targets = getattr(base, "labels", None)
    if targets is not None and idx is not None:
        return torch.as_tensor(targets, dtype=torch.long)[torch.as_tensor(idx, dtype=torch.long)]
    items = getattr(ds, "items", None)
    if isinstance(items, list) and items and isinstance(items[0], tuple) and len(items[0]) == 2:
        return torch.tensor([int(lab) for _, lab in items], dtype=torch.long)
    try:  # any other dataset: read every sample once
        return torch.stack([torch.as_tensor(ds[i]["label"]) for i in range(len(ds))])  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001  (a split without labels: methods needing them refuse)
        return None
