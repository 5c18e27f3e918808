"""Storage resolution of cached saliency maps (issue 18): how a map is stored and brought back.

A consumer reads a cached map only at a few sizes (the weighted ReviewKD pools it to its levels,
DESIGN 3.5), so storing it at input resolution wastes space: 224 px maps cost 100 KB each.
``explain.storage_size``:

* ``"auto"`` (default): the explainer's native size where it has one (Grad-CAM: its layer's
  h x w, e.g. 7 x 7 for ``tv:resnet18`` layer4 at 224 px), else the finest size the consumer reads
  (the largest distilled level; ``read_size``), else the input size;
* ``"input"``: the input size (the cache as it was before storage sizes: results identical);
* an integer ``s``: s x s (at most the input size).

Two storage modes, and how a stored map returns to the image size before joint augmentation:

* ``native`` (Grad-CAM at its layer's size): the ReLU'd layer map is stored; reading applies the
  explainer's own upsampling (``interpolate_mode``) and normalisation, so the map equals the one
  ``explain`` gives up to float16 rounding of the stored values (relative 2^-11).
* ``area``: the input-resolution map is area-averaged (adaptive average pooling) to the storage
  size; reading enlarges it with nearest-neighbour ("nearest-exact"). Without geometric
  augmentation, pooling the enlarged map to any level whose size divides the storage size gives
  exactly the pooled full map (area pooling composes); a random crop shifts the enlarged map by
  whole pixels, which at the levels finer than the storage size is an approximation (the map is
  piecewise constant over storage cells instead of varying inside them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution

from xkd.errors import ConfigError
from xkd.explain.postprocess import normalize


def resolve(setting: Any, explainer: Any, example: torch.Tensor,
            read_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The storage spec ``{"mode", "size", ...}`` for ``explain.storage_size`` = ``setting``.

    ``example`` is one image (C,H,W) or a batch (B,C,H,W); ``read_size`` the finest size the
    consumer reads (None: the input size).
    """
    x = example if example.dim() == 4 else example.unsqueeze(0)
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    if setting == "input":
        return {"mode": "area", "size": list(hw)}
    if isinstance(setting, int) and not isinstance(setting, bool):
        if setting > min(hw):
            raise ConfigError("explain.storage_size", f"{setting} is larger than the images "
                              f"({hw[0]}x{hw[1]}); allowed: 'auto', 'input' or an integer <= {min(hw)}")
        return {"mode": "area", "size": [setting, setting]}
    if setting != "auto":
        raise ConfigError("explain.storage_size", f"{setting!r} is not allowed; allowed: 'auto', "
                          "'input' or an integer >= 1")
    native = explainer.native_size(x) if hasattr(explainer, "native_size") else None
    if native is not None and native[0] <= hw[0] and native[1] <= hw[1]:
        p = explainer.params
        return {"mode": "native", "size": [int(native[0]), int(native[1])],
                "interpolate_mode": p.interpolate_mode, "normalize": p.normalize}
    if read_size is not None:
        return {"mode": "area", "size": [min(int(read_size[0]), hw[0]), min(int(read_size[1]), hw[1])]}
    return {"mode": "area", "size": list(hw)}


def compute(explainer: Any, spec: dict[str, Any], x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Maps (B,1,h,w) float32 at the storage size for images ``x`` and targets."""
    if spec["mode"] == "native":
        return explainer.native(x, target)
    maps = explainer.explain(x, target)
    size = tuple(spec["size"])
    return maps if tuple(maps.shape[-2:]) == size else F.adaptive_avg_pool2d(maps, size)


def to_image(maps: torch.Tensor, spec: dict[str, Any], size: tuple[int, int]) -> torch.Tensor:
    """Stored maps (B,1,h,w) brought to the image ``size`` (see the module docstring)."""
    size = (int(size[0]), int(size[1]))
    if spec["mode"] == "native":
        up = LayerAttribution.interpolate(maps.float(), size, interpolate_mode=spec["interpolate_mode"])
        return normalize(up.clamp_min(0), spec["normalize"])
    if tuple(maps.shape[-2:]) == size:
        return maps
    return F.interpolate(maps, size=size, mode="nearest-exact")
