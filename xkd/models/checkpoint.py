"""Load ``model.checkpoint`` into a built model (``torch.load(weights_only=True)`` via xkd.io).

Accepted files: a plain state_dict, or a dict holding it under ``model``, ``state_dict`` or
``trainable`` (xkd's own ``best.pt``/``last.pt``, the CRD / RepDistiller teachers ``{"model": ...,
"epoch": ..., "best_acc": ...}``, most training scripts). A ``module.`` prefix on every key
(DataParallel/DDP) is stripped. A distiller's checkpoint (every key ``student.*`` or ``extra.*``,
e.g. ``RUN/teacher/best.pt`` or ``RUN/students/NAME/best.pt``) gives its ``student.*`` part, so a
run's own teacher or student can be reused as a pretrained teacher. For a wrapped plain module
(:class:`HookedFeatureModel`, torchvision models) keys may be those of the inner network
(``conv1.weight``) or of the wrapper (``net.conv1.weight``).

Community key names: a model class lists ``COMMUNITY_KEYS``, regex renames from the names of the KD
literature's reference code (CRD / RepDistiller, also used by ReviewKD and mdistiller) to its own;
they are tried when the file's names do not fit as they are. Only ``num_batches_tracked`` buffers
(absent from files written before PyTorch 0.4.1) may be missing; they keep the model's values.
Missing/unexpected keys or shape mismatches are one :class:`ConfigError` line listing the first
few and the count.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from xkd.errors import ConfigError, UserError
from xkd.io import torch_load

_SHOW = 5
_WRAPPERS = ("model", "state_dict", "trainable")
_OPTIONAL = "num_batches_tracked"


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"({len(keys)}): " + ", ".join(keys[:_SHOW]) + more


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def extract_state_dict(obj: Any, field: str) -> dict[str, torch.Tensor]:
    """The model state_dict inside a loaded checkpoint object (see the module docstring)."""
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        for key in _WRAPPERS:
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise ConfigError(field, "expected a state_dict (name -> tensor) or a dict with key "
                                 f"{', '.join(repr(k) for k in _WRAPPERS)} holding one")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if (any(k.startswith("student.") for k in sd)
            and all(k.startswith(("student.", "extra.")) for k in sd)):  # an xkd Distiller's modules
        sd = {k[len("student."):]: v for k, v in sd.items() if k.startswith("student.")}
        if all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def community_renamed(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``sd`` with ``model.COMMUNITY_KEYS`` applied (None when the class has no renames)."""
    rules: tuple[tuple[str, str], ...] = tuple(getattr(model, "COMMUNITY_KEYS", ()))
    if not rules:
        return None
    out = {}
    for k, v in sd.items():
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def _mismatch(own: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    missing = [k for k in own if k not in sd and not k.endswith(_OPTIONAL)]
    return missing, [k for k in sd if k not in own]


def load_state(model: nn.Module, sd: dict[str, torch.Tensor], field: str) -> None:
    """Strictly load ``sd`` into ``model`` (or its inner ``net``), as is or with the model's
    community key names mapped; readable mismatch errors."""
    targets = [model] + ([model.net] if isinstance(getattr(model, "net", None), nn.Module) else [])
    renamed = community_renamed(model, sd)
    options = [(t, s) for t in targets for s in ([sd] + ([renamed] if renamed is not None else []))]

    def cost(opt: tuple[nn.Module, dict[str, torch.Tensor]]) -> int:
        missing, unexpected = _mismatch(opt[0].state_dict(), opt[1])
        return len(missing) + len(unexpected)

    target, sd = min(options, key=cost)
    own = target.state_dict()
    missing, unexpected = _mismatch(own, sd)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise ConfigError(field, f"checkpoint does not match the model; {'; '.join(parts)}")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ConfigError(field, f"checkpoint shapes do not match the model (file vs model) {_few(wrong)}")
    full = {k: sd.get(k, own[k]) for k in own}  # absent num_batches_tracked: keep the model's
    target.load_state_dict(full, strict=True)


def load_checkpoint(model: nn.Module, file: str, field: str = "checkpoint") -> None:
    """Load the weights in ``file`` into ``model``; every problem is a ConfigError on ``field``."""
    try:
        obj = torch_load(file)
    except ConfigError:
        raise
    except UserError as e:
        raise ConfigError(field, str(e)) from None
    load_state(model, extract_state_dict(obj, field), field)
