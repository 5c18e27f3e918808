"""A FeatureModel around any classifier ``nn.Module``: stages discovered by a dry run, read by hooks.

Used for torchvision models (``tv:NAME``) and for user factories returning a plain module.

Discovery (stage modules, pooled input, pre-activation taps; :mod:`xkd.models.discovery`): one
eval-mode dry run with hooks on every submodule. In short: the stage of each resolution is the
module producing a downsampler's input (torchvision ResNets: ``layer1..layer4``; VGG: the ReLU
before each pool); ``pooled`` is the input of the final Linear; ``preact`` is the input of the
activation module that ends a stage (``preact_kinds`` per stage: ``"relu"``, ``"relu6"``, ...,
``"identity"`` for linear stages, ``"unavailable"`` where no activation module can be hooked, said
once per model in a warning); ``preact_relation`` is ``"relu"``/``"identity"`` when all stages
agree, else ``"mixed"``.

Hooks are attached for the duration of one :meth:`HookedFeatureModel.features` call (never left on
the module, so ``copy.deepcopy`` and pickling stay clean). ``stage_layers()`` returns the very
modules that are hooked, so Captum's LayerGradCam on them sees exactly ``features().stages``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from xkd.errors import UserError
from xkd.models.base import FeatureModel, Features
from xkd.models.discovery import first_tensor, discover, output_logits

__all__ = ["HookedFeatureModel", "discover", "output_logits", "wrap"]

log = logging.getLogger(__name__)
_WARNED: set[str] = set()


class HookedFeatureModel(FeatureModel):
    """Wraps ``net``; ``features`` hooks the stage modules (and the pooled input) during one pass."""

    preact_relation = "identity"

    def __init__(self, net: nn.Module, stage_names: list[str], pooled_name: str | None = None,
                 preact_taps: list[tuple[str, int] | None] | None = None,
                 preact_kinds: list[str] | None = None) -> None:
        super().__init__()
        self.net = net
        mods = dict(net.named_modules())
        missing = [n for n in stage_names if n not in mods]
        if missing:
            raise UserError(f"stage module(s) {missing} not found; available: "
                            f"{', '.join(n for n in list(mods)[1:30] if n)} ...")
        self.stage_names = list(stage_names)
        self.pooled_name = pooled_name
        self.preact_taps = list(preact_taps) if preact_taps else [None] * len(stage_names)
        self.preact_kinds = list(preact_kinds) if preact_kinds else ["unavailable"] * len(stage_names)
        if len(self.preact_taps) != len(stage_names) or len(self.preact_kinds) != len(stage_names):
            raise ValueError("preact_taps and preact_kinds need one entry per stage")
        kinds = set(self.preact_kinds)
        self.preact_relation = ("relu" if kinds == {"relu"} else
                                "identity" if kinds <= {"identity", "unavailable"} else "mixed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return output_logits(self.net(x))

    def features(self, x: torch.Tensor) -> Features:
        mods = dict(self.net.named_modules())
        store: dict[str, torch.Tensor] = {}

        def grab(name: str):
            def hook(mod: nn.Module, inp: Any, out: Any) -> None:
                t = first_tensor(out)
                if t is not None:
                    store[name] = t
            return hook

        def grab_pooled(mod: nn.Module, inp: Any) -> None:
            store["\0pooled"] = torch.flatten(inp[0], 1)

        counts: dict[str, int] = {}

        def grab_input(name: str, wanted: int):
            def hook(mod: nn.Module, inp: Any) -> None:
                k = counts.get(name, 0)
                counts[name] = k + 1
                if k == wanted and isinstance(inp[0], torch.Tensor):
                    store[f"\0pre:{name}:{k}"] = inp[0].clone()  # in-place activations overwrite it
            return hook

        handles = [mods[n].register_forward_hook(grab(n)) for n in self.stage_names]
        taps = {tap for tap in self.preact_taps if tap is not None}
        handles += [mods[n].register_forward_pre_hook(grab_input(n, k)) for n, k in taps]
        if self.pooled_name is not None:
            handles.append(mods[self.pooled_name].register_forward_pre_hook(grab_pooled))
        try:
            logits = output_logits(self.net(x))
        finally:
            for h in handles:
                h.remove()
        absent = [n for n in self.stage_names if n not in store]
        if absent:
            raise RuntimeError(f"stage module(s) {absent} did not run in this forward pass")
        stages = [store[n] for n in self.stage_names]
        preact = [s if tap is None else store.get(f"\0pre:{tap[0]}:{tap[1]}", s)
                  for s, tap in zip(stages, self.preact_taps)]
        pooled = store.get("\0pooled")
        if pooled is None:
            pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(stages[-1], 1), 1)
        return Features(stages, preact, pooled, logits)

    def stage_layers(self) -> list[nn.Module]:
        mods = dict(self.net.named_modules())
        return [mods[n] for n in self.stage_names]


def wrap(net: nn.Module, in_channels: int, image_size: int, drop_stem: bool = True,
         stage_modules: list[str] | None = None, label: str = "model") -> HookedFeatureModel:
    """Discover stages of ``net`` (or use ``stage_modules``) and their pre-activation taps; wrap it.
    Stages without a reachable pre-activation are named in one warning per ``label``."""
    found = discover(net, in_channels, image_size, drop_stem, label, stage_modules)
    lost = [n for n, k in zip(found.stage_names, found.preact_kinds) if k == "unavailable"]
    if lost and label not in _WARNED:
        _WARNED.add(label)
        log.warning("%s: stage(s) %s end in a non-negative map that no activation module produced "
                    "(a functional activation or a concatenation), so their pre-activation cannot be "
                    "hooked; preact = the post-activation stage map there (ReviewKD distils it as is)",
                    label, ", ".join(lost))
    return HookedFeatureModel(net, found.stage_names, found.pooled_name, found.preact_taps,
                              found.preact_kinds)
