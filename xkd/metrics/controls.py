"""Control attributions that every report adds as rows (reference/xai_metrics.md §7.2(3)).

A random map (i.i.d. U[0, 1) per pixel from the explicit generator) and a uniform map (all ones)
give the chance level of every metric; an explanation that does not beat them says nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch


def random_attribution(shape: Sequence[int], generator: torch.Generator,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """i.i.d. U[0, 1) map of ``shape`` (e.g. (N,1,H,W)), float32, drawn from ``generator``."""
    out = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return out.to(device) if device is not None else out


def uniform_attribution(shape: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
    """Constant map of ones (all pixels equally relevant), float32."""
    return torch.ones(tuple(shape), device=device)


def control_maps(like: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{'random': ..., 'uniform': ...}`` maps shaped and placed like ``like`` (N,1,H,W)."""
    return {"random": random_attribution(like.shape, generator, like.device),
            "uniform": uniform_attribution(like.shape, like.device)}
