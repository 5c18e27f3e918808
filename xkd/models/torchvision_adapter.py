"""Any torchvision classification model as a FeatureModel: ``tv:NAME`` (e.g. ``tv:resnet18``).

The network comes from ``torchvision.models.get_model(NAME, weights=None, num_classes=...)``
(``weights``: a torchvision weights name such as ``DEFAULT`` or ``ResNet18_Weights.IMAGENET1K_V1``,
which downloads on first use and then has its 1000-way classifier replaced when ``num_classes``
differs). Stages are the last module at each spatial resolution of the backbone, found by a dry run
(:mod:`xkd.models.hooked`): ``layer1..layer4`` for ResNets, ``features.N`` blocks for
MobileNet/EfficientNet/VGG, and so on; ``params.stage_modules`` overrides the choice.

Why hooks and not ``torchvision.models.feature_extraction.create_feature_extractor``: the FX graph
it builds inlines container modules (``layer1`` is not called as a module in the graph), so Captum's
LayerGradCam hooks on those modules would never fire. We keep the original model and read the stage
outputs with forward hooks on the real stage modules, so ``features().stages`` and LayerGradCam on
``stage_layers()`` see the same tensors. ``preact`` is the input of the activation module that ends a
stage where there is one (ResNets: each stage's last ``relu``; VGG: the stage ReLU), the stage
itself where it is linear (MobileNet/EfficientNet bottlenecks), and otherwise the post-activation
map with one warning (see :mod:`xkd.models.hooked`).

``in_channels != 3``: the first 3-channel convolution is replaced by one with ``in_channels``
inputs (pretrained RGB filters are averaged and rescaled by 3 / in_channels).
"""

from __future__ import annotations

import difflib

import torch
import torchvision
from pydantic import ConfigDict, Field
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.errors import ConfigError, UserError
from xkd.models.base import MODELS
from xkd.models.hooked import HookedFeatureModel, wrap


class TorchvisionParams(NumbersAreNumbers):
    """Parameters of ``tv:NAME`` models."""

    model_config = ConfigDict(extra="forbid")
    weights: str | None = Field(
        None, description="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...); downloads; null = random init")
    drop_stem: bool = Field(True, description="drop a stride-2 single-conv stem from the stage list")
    stage_modules: list[str] | None = Field(
        None, description="explicit stage module names (e.g. ['layer2', 'layer3', 'layer4'])")


def classification_models() -> list[str]:
    """torchvision's classification model names (``torchvision.models.list_models``)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve(name: str, weights: str | None = None) -> tuple[str, object | None]:
    """Check ``tv:NAME`` and the weights name without building; ConfigError on ``name`` /
    ``params.weights`` (relative field paths, rebased by :func:`xkd.models.build`)."""
    arch = name[3:] if name.startswith("tv:") else name
    available = classification_models()
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=5)
        hint = f"did you mean {', '.join('tv:' + c for c in close)}? " if close else ""
        raise ConfigError("name", f"unknown torchvision classification model '{arch}'; {hint}"
                                  "see torchvision.models.list_models(module=torchvision.models)")
    if not weights:
        return arch, None
    enum = torchvision.models.get_model_weights(arch)
    member = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
    allowed = list(enum.__members__)
    if member not in allowed:
        raise ConfigError("params.weights", f"unknown weights '{weights}' for tv:{arch}; "
                                            f"allowed: {', '.join(allowed)}")
    return arch, enum[member]


def _replace(net: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, new)


def _replace_classifier(net: nn.Module, old_classes: int, num_classes: int, label: str) -> None:
    for name, m in reversed(list(net.named_modules())):
        if isinstance(m, nn.Linear) and m.out_features == old_classes:
            _replace(net, name, nn.Linear(m.in_features, num_classes, bias=m.bias is not None))
            return
        if isinstance(m, nn.Conv2d) and m.out_channels == old_classes:  # squeezenet
            _replace(net, name, nn.Conv2d(m.in_channels, num_classes, m.kernel_size, m.stride,
                                          m.padding, bias=m.bias is not None))
            return
    raise UserError(f"{label}: cannot find the {old_classes}-way classifier to resize to {num_classes}")


def replace_first_conv(net: nn.Module, in_channels: int, pretrained: bool, label: str) -> None:
    """Swap the first 3-channel Conv2d for one taking ``in_channels`` inputs."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            if m.groups != 1:
                break
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            m.dilation, 1, m.bias is not None, m.padding_mode)
            with torch.no_grad():
                if pretrained:
                    w = m.weight.mean(1, keepdim=True) * (3.0 / in_channels)
                    new.weight.copy_(w.repeat(1, in_channels, 1, 1))
                else:
                    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    new.bias.copy_(m.bias)
            _replace(net, name, new)
            return
    raise UserError(f"{label}: in_channels={in_channels} is not supported (no plain 3-channel "
                    "input convolution to replace); use 3-channel images")


@MODELS.register("tv:", params=TorchvisionParams, prefix=True, family="torchvision")
def torchvision_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    weights: str | None = None,
    drop_stem: bool = True,
    stage_modules: list[str] | None = None,
) -> HookedFeatureModel:
    """Any torchvision classification model (``tv:NAME``), stages found by a dry run."""
    arch, w = resolve(name, weights)
    label = f"tv:{arch}"
    if w is not None:
        try:
            net = torchvision.models.get_model(arch, weights=w)
        except OSError as e:  # URLError is an OSError: offline, proxy, disk
            raise UserError(f"{label}: cannot fetch weights {w} ({e}); download them once with "
                            "internet access or set weights: null") from None
        old = len(w.meta.get("categories") or [])
        if old and old != num_classes:
            _replace_classifier(net, old, num_classes, label)
    else:
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if in_channels != 3:
        replace_first_conv(net, in_channels, w is not None, label)
    return wrap(net, in_channels, image_size, drop_stem, stage_modules, label)
