"""Load ``model.checkpoint`` into a built model (``torch.load(weights_only=True)`` via xkd.io).

Accepted files: a plain state_dict, or a dict holding it under ``model`` or ``state_dict`` (xkd's
own checkpoints, most training scripts). A ``module.`` prefix on every key (DataParallel/DDP) is
stripped. For a wrapped plain module (:class:`HookedFeatureModel`, torchvision models) keys may be
those of the inner network (``conv1.weight``) or of the wrapper (``net.conv1.weight``).
Missing/unexpected keys or shape mismatches are one :class:`ConfigError` line listing the first few.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xkd.errors import ConfigError, UserError
from xkd.io import torch_load

_SHOW = 5


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def extract_state_dict(obj: Any, field: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded checkpoint object."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise ConfigError(field, "expected a state_dict (name -> tensor) or a dict with key 'model' "
                                 "or 'state_dict' holding one")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state(model: nn.Module, sd: dict[str, torch.Tensor], field: str) -> None:
    """Strictly load ``sd`` into ``model`` (or its inner ``net``), with readable mismatch errors."""
    targets = [model] + ([model.net] if isinstance(getattr(model, "net", None), nn.Module) else [])
    target = max(targets, key=lambda t: len(set(t.state_dict()) & set(sd)))
    own = target.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise ConfigError(field, f"checkpoint does not match the model; {'; '.join(parts)}")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ConfigError(field, f"checkpoint shapes do not match the model (file vs model): {_few(wrong)}")
    target.load_state_dict(sd, strict=True)


def load_checkpoint(model: nn.Module, file: str, field: str = "checkpoint") -> None:
    """Load the weights in ``file`` into ``model``; every problem is a ConfigError on ``field``."""
    try:
        obj = torch_load(file)
    except ConfigError:
        raise
    except UserError as e:
        raise ConfigError(field, str(e)) from None
    load_state(model, extract_state_dict(obj, field), field)
