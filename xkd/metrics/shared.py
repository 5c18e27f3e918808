"""Forwards shared between metrics within one computation (DESIGN section 7).

Inside ``with shared_forwards():`` the perturbation metrics look up what an earlier metric already
forwarded through the same model: the clean logits of the same images, and the scores of
perturbed images that coincide, i.e. the same pixel order, the same fill (what replaces a pixel)
and the same step (number of pixels replaced). Deletion and MoRF AOPC with one-pixel patches and a
zero fill, or every metric's clean forward (target resolution), are such cases. Keys are content
fingerprints (BLAKE2b of the tensors' bytes) of the model's identity and parameter versions, the
order, the fills, the target and the output space, so a match means the perturbed inputs are equal
bit for bit; nothing is shared by name alone. Outside the block nothing is cached.

The cache also counts the images the metrics asked to forward (``requested``) and those actually
forwarded (``run``), for the report and ``python -m xkd.bench``.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator

import torch
from torch import nn


def fingerprint(t: torch.Tensor) -> bytes:
    """BLAKE2b digest of a tensor's shape, dtype and values (a copy to the CPU when needed)."""
    a = t.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(a.shape), str(a.dtype))).encode())
    if a.numel():
        h.update(a.reshape(-1).view(torch.uint8).numpy())
    return h.digest()


def model_key(model: nn.Module) -> tuple[int, int]:
    """Identity of ``model`` and the summed version counters of its parameters and buffers,
    which change with every in-place update (an optimiser step, ``load_state_dict``)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return id(model), sum(int(t._version) for t in tensors)


@dataclass
class ForwardCache:
    """Clean logits and perturbed-image scores of one computation, with forward counts."""

    requested: int = 0
    run: int = 0
    clean: dict[Hashable, torch.Tensor] = field(default_factory=dict)
    curves: dict[Hashable, dict[int, torch.Tensor]] = field(default_factory=dict)
    models: list[nn.Module] = field(default_factory=list)

    def keep(self, model: nn.Module) -> None:
        """Hold a reference so a model's ``id`` cannot be reused while its entries live."""
        if not any(m is model for m in self.models):
            self.models.append(model)

    def note(self, requested: int, run: int) -> None:
        self.requested += int(requested)
        self.run += int(run)

    def summary(self) -> dict[str, Any]:
        return {"requested": self.requested, "run": self.run,
                "ratio": self.run / self.requested if self.requested else 1.0}


_ACTIVE: ContextVar[ForwardCache | None] = ContextVar("xkd_shared_forwards", default=None)


def active_cache() -> ForwardCache | None:
    """The cache of the innermost ``shared_forwards()`` block, or None."""
    return _ACTIVE.get()


@contextmanager
def shared_forwards() -> Iterator[ForwardCache]:
    """Share forwards between the metrics computed inside the block (models must not change)."""
    cache = ForwardCache()
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
