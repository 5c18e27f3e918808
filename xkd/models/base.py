"""The model contract (DESIGN section 3.2): a :class:`FeatureModel` exposes stage features.

``forward(x)`` returns logits. ``features(x)`` returns :class:`Features`: stage outputs shallow ->
deep after their activation (``stages``) and before it (``preact``), the pooled vector and the
logits. ``stage_layers()`` returns the modules whose *outputs* are ``stages`` (used as Grad-CAM
layers). Channel and spatial sizes come from :func:`describe` (a dry run), never from tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from xkd.registry import Registry

MODELS: Registry["FeatureModel"] = Registry("model")
"""Model factories: ``factory(num_classes=..., in_channels=..., image_size=..., **params)``."""


@dataclass
class Features:
    """Stage features of one forward pass (shallow -> deep)."""

    stages: list[torch.Tensor]
    preact: list[torch.Tensor]
    pooled: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class StageInfo:
    """Shape of one stage (from a dry run)."""

    channels: int
    height: int
    width: int
    frames: int | None = None
    """Time steps of a 5-D (B,C,T,h,w) video stage map; None for 2-D (B,C,h,w) maps."""


class FeatureModel(nn.Module):
    """Base class: subclasses implement :meth:`features` and :meth:`stage_layers`.

    ``preact_relation`` says how ``preact`` relates to ``stages``: ``"relu"`` means
    ``stages[i] == relu(preact[i])`` (ReLU nets: preact is the pre-ReLU map ReviewKD taps on the
    teacher); ``"identity"`` means no activation follows the stage, so ``preact[i] is stages[i]``
    (torchvision/user adapters, linear-bottleneck MobileNetV2 stages).
    """

    preact_relation: str = "relu"
    input_dims: int = 3
    """Dimensions of one input sample: 3 for images (C,H,W), 4 for video clips (C,T,H,W)."""
    COMMUNITY_KEYS: tuple[tuple[str, str], ...] = ()
    """Regex renames (pattern, replacement), applied in order to every key of a checkpoint written by
    the KD literature's reference code, giving this class's names (:mod:`xkd.models.checkpoint`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).logits

    def features(self, x: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    def stage_layers(self) -> list[nn.Module]:  # pragma: no cover - abstract
        """Modules whose forward outputs are ``features(x).stages`` (same order)."""
        raise NotImplementedError


def run_stages(x: torch.Tensor, stages: Iterable[nn.Sequential]
               ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Run ``stages`` in order where each stage's last unit exposes ``preact(x)`` (its
    pre-activation map) and ``relu_out`` (its activation module), as the residual and shuffle
    blocks do. Returns the last output and every stage's post- and pre-activation map."""
    outs: list[torch.Tensor] = []
    pres: list[torch.Tensor] = []
    for stage in stages:
        for unit in stage[:-1]:
            x = unit(x)
        pre = stage[-1].preact(x)
        x = stage[-1].relu_out(pre)
        outs.append(x)
        pres.append(pre)
    return x, outs, pres


def stage_activations(stages: Iterable[nn.Sequential]) -> list[nn.Module]:
    """The activation modules whose outputs are :func:`run_stages`' stage maps."""
    return [stage[-1].relu_out for stage in stages]


@torch.no_grad()
def describe(model: FeatureModel, example: torch.Tensor) -> tuple[list[StageInfo], int]:
    """Stage shapes and pooled width from a dry run on ``example``: one sample (C,H,W), or (C,T,H,W)
    for a video model (``model.input_dims == 4``), with or without a leading batch dimension.

    The model's train/eval mode is restored afterwards (BatchNorm statistics are not touched).
    """
    dims = int(getattr(model, "input_dims", 3))
    x = example if example.dim() == dims + 1 else example.unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        f = model.features(x[:1])
    finally:
        model.train(was_training)
    infos = [StageInfo(int(s.shape[1]), int(s.shape[-2]), int(s.shape[-1]),
                       int(s.shape[2]) if s.dim() == 5 else None) for s in f.stages]
    return infos, int(f.pooled.shape[1])


def list_models() -> list[str]:
    """Every registered model name (``tv:NAME`` covers torchvision classifiers)."""
    import xkd.models  # noqa: F401

    return MODELS.names()
