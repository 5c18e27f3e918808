"""Backbones exposing stage features (DESIGN section 3.2).

``build(cfg, num_classes, in_channels, image_size, path)`` turns a :class:`~xkd.config.ModelConfig`
(or a bare registered name) into a :class:`FeatureModel`; ``describe(model, example)`` gives the
stage shapes from a dry run; ``list_models()`` the registered names.

Built in: ``resnet8/14/20/32/44/56/110``, ``resnet8x4``, ``resnet32x4`` (CIFAR ResNets),
``wrn-16-2``, ``wrn-40-1``, ``wrn-40-2`` (WRNs), ``mobilenetv2`` (xkd's CIFAR MobileNetV2), the KD
literature's CIFAR-100 nets ``vgg8/11/13/16/19`` (BN), ``shufflenetv1``, ``shufflenetv2``,
``resnet50`` (bottleneck) and ``mobilenetv2_kd`` (CRD / ReviewKD's MobileNetV2), ``tv:NAME``
(any torchvision classifier) and the video students ``r2plus1d_tiny`` and ``frame_cnn`` on
(B,C,T,H,W) clips (``model.input_dims == 4``; their stages are (B,C,T,h,w)). ``preact`` semantics per family (``model.preact_relation``):

* CIFAR ResNets: pre-ReLU residual sum of each stage's last block; ``stages = relu(preact)``.
* WRNs: BN that follows each group (next group's first BN, or the final BN); ``stages = relu(preact)``.
* VGG, ShuffleNet V1/V2, ResNet-50: the map before the stage's final ReLU; ``stages = relu(preact)``.
* MobileNetV2 (both): linear bottleneck outputs, ``preact is stages`` (``"identity"``).
* ``tv:`` and wrapped user models: the input of the activation module ending each stage where there
  is one, else the stage itself (``preact_kinds`` per stage; :mod:`xkd.models.hooked`).

Checkpoints (:mod:`xkd.models.checkpoint`): plain/wrapped state_dicts, xkd run files, and the KD
literature's CIFAR-100 teachers (CRD / RepDistiller key names, ``COMMUNITY_KEYS`` per family).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xkd.config import ModelConfig, _error_from_validation
from xkd.errors import ConfigError
from xkd.models.base import MODELS, FeatureModel, Features, StageInfo, describe, list_models
from xkd.models.checkpoint import load_checkpoint
from xkd.models.factory import build_from_factory, factory_kwargs, import_factory
from xkd.models.hooked import HookedFeatureModel
from xkd.registry import import_members

__all__ = [
    "MODELS", "Features", "FeatureModel", "HookedFeatureModel", "StageInfo", "build", "check",
    "describe", "list_models", "load_checkpoint",
]


def _field(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path else leaf


def _rebase(e: ConfigError, path: str) -> ConfigError:
    """A ConfigError raised with a field path relative to the model section, made absolute."""
    if not path:
        return e
    msg = str(e)[len(e.path) + 2:] if e.path else str(e)
    return ConfigError(_field(path, e.path) if e.path else path, msg)


def _params(cfg: ModelConfig, path: str) -> dict[str, Any]:
    entry = MODELS.entry(cfg.name or "", path=_field(path, "name"))
    params: dict[str, Any] = dict(cfg.params)
    if entry.params is not None:
        try:
            params = entry.params.model_validate(params).model_dump()
        except ValidationError as e:
            raise _error_from_validation(e, _field(path, "params"), entry.params) from None
    return params


def check(cfg: ModelConfig | str, path: str = "") -> None:
    """Validate a model section without building it: name (and ``tv:`` architecture and weights
    name), params schema, factory import, checkpoint file existence. Errors name ``path``."""
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    if cfg.name is not None:
        params = _params(cfg, path)
        if cfg.name.startswith("tv:"):
            try:
                torchvision_adapter.resolve(cfg.name, params.get("weights"))
            except ConfigError as e:
                raise _rebase(e, path) from None
    else:
        spec = cfg.factory or ""
        factory_kwargs(import_factory(spec, _field(path, "factory")), spec, dict(cfg.params), 1,
                       path=path)
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():
        raise ConfigError(_field(path, "checkpoint"), f"file not found: {cfg.checkpoint}")


def build(
    cfg: ModelConfig | str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    path: str = "",
) -> FeatureModel:
    """Build the model described by ``cfg`` (a ModelConfig or a registered name).

    ``path`` is the config field path used in error messages (e.g. ``teacher.model``,
    ``students[1].model``). ``cfg.checkpoint`` is loaded (weights_only) when set.
    """
    if isinstance(cfg, str):
        cfg = ModelConfig(name=cfg)
    if num_classes < 1:
        raise ConfigError(path, f"num_classes must be >= 1 (got {num_classes})")
    if in_channels < 1 or image_size < 1:
        raise ConfigError(path, f"in_channels and image_size must be >= 1 (got {in_channels}, {image_size})")
    if cfg.name is not None:
        params = _params(cfg, path)
        try:
            model = MODELS.build(cfg.name, num_classes=num_classes, in_channels=in_channels,
                                 image_size=image_size, **params)
        except ConfigError as e:
            raise _rebase(e, path) from None
    else:
        assert cfg.factory is not None  # guaranteed by ModelConfig
        model = build_from_factory(cfg.factory, dict(cfg.params), num_classes, in_channels,
                                   image_size, path)
    if cfg.checkpoint:
        load_checkpoint(model, cfg.checkpoint, _field(path, "checkpoint"))
    return model


import_members(__name__)  # every model family registers itself
