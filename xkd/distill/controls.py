"""Controls for explanation-guided distillation (issue 15): give every sample of a batch another
sample's teacher map, so a variant keeps map-shaped guidance but loses *where the teacher looks
for this image*. Used by ``reviewkd``'s ``saliency_shuffle`` and ``e2kd``'s
``explanation_shuffle``."""

from __future__ import annotations

import torch


def derangement(n: int, device: torch.device | str = "cpu",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation with no fixed point (n ≥ 2): sample order[k] gets order[k+1]'s map."""
    order = torch.randperm(n, generator=generator)
    perm = torch.empty_like(order)
    perm[order] = order.roll(-1)
    return perm.to(device)
