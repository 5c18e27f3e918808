"""User model factories: ``model: {factory: "pkg.module:function", params: {...}}``.

The function is imported and called with ``params`` as keyword arguments; ``num_classes``,
``in_channels`` and ``image_size`` are added when the function accepts them and ``params`` does not
set them. A returned :class:`FeatureModel` is used as is; any other ``nn.Module`` classifier is
wrapped in :class:`~xkd.models.hooked.HookedFeatureModel`, whose stages are discovered by a dry run.
Every mistake is a :class:`ConfigError` naming the field (``teacher.model.factory``, ...).

An experiment file that names a factory runs that code, so only what the user plainly meant is
imported and called: a class or a Python function defined in a module outside the standard library
(``os:system``, ``builtins:eval``, ``subprocess:run`` and re-exports of them such as
``mypkg:os_alias`` are refused before anything is called), and the call is checked against the
target's signature (``inspect.signature(...).bind``) before it is made, ``--check`` included.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any, Callable

import torch
from torch import nn

from xkd.errors import ConfigError, UserError
from xkd.models.base import FeatureModel
from xkd.models.hooked import wrap


def _field(path: str, leaf: str) -> str:
    return f"{path}.{leaf}" if path else leaf


def _stdlib(module: str | None) -> bool:
    """Whether ``module`` (dotted) belongs to Python's standard library or its builtins."""
    top = (module or "").partition(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names or top == "__main__"


def import_factory(spec: str, field: str) -> Callable[..., Any]:
    """Resolve ``pkg.module:function`` (the attribute may be dotted, e.g. ``mod:Class.build``).

    Only a class or a Python function (or a class's method) defined in a module outside the
    standard library is returned; nothing is called here."""
    if ":" not in spec:
        raise ConfigError(field, f"'{spec}' must look like 'package.module:function'")
    mod_name, _, attr = spec.partition(":")
    if _stdlib(mod_name):
        raise ConfigError(field, f"'{mod_name.partition('.')[0]}' is a standard-library module; a "
                                 "factory must be a class or function of your own package")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(field, f"cannot import module '{mod_name}' ({e}); is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, f"module '{mod_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    func = obj.__func__ if inspect.ismethod(obj) else obj
    if not (inspect.isclass(func) or inspect.isfunction(func)):
        kind = type(obj).__name__
        raise ConfigError(field, f"'{spec}' is a {kind}, not a callable: a factory must be a class "
                                 "or Python function defined in your own package")
    home = getattr(func, "__module__", None)
    if _stdlib(home):
        raise ConfigError(field, f"'{spec}' is defined in the standard-library module '{home}', not in "
                                 "your own package; name the factory where it is defined")
    return obj


def factory_kwargs(fn: Callable[..., Any], spec: str, params: dict[str, Any], num_classes: int,
                   in_channels: int = 3, image_size: int = 32, path: str = "") -> dict[str, Any]:
    """The keyword arguments ``fn`` will be called with, checked against its signature first."""
    kwargs = dict(params)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise ConfigError(_field(path, "factory"), f"cannot read the signature of {spec}") from None
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels),
                       ("image_size", image_size)):
        if key not in kwargs and _accepts(sig, key):
            kwargs[key] = value
    try:
        sig.bind(**kwargs)
    except TypeError as e:
        raise ConfigError(_field(path, "params"), f"cannot call {spec}: {e}") from None
    return kwargs


def _accepts(sig: inspect.Signature, name: str) -> bool:
    return name in sig.parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def build_from_factory(
    spec: str,
    params: dict[str, Any],
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    path: str = "",
) -> FeatureModel:
    """Call the user factory and return a FeatureModel (wrapping a plain module)."""
    field = _field(path, "factory")
    fn = import_factory(spec, field)
    net = fn(**factory_kwargs(fn, spec, params, num_classes, in_channels, image_size, path))
    if not isinstance(net, nn.Module):
        raise ConfigError(field, f"{spec} returned {type(net).__name__}, not a torch.nn.Module")
    if isinstance(net, FeatureModel):
        model: FeatureModel = net
    else:
        try:
            model = wrap(net, in_channels, image_size, label=spec)
        except UserError as e:
            raise ConfigError(field, str(e)) from None
    logits_width = _logit_width(model, in_channels, image_size, spec, field)
    if logits_width != num_classes:
        raise ConfigError(field, f"{spec} outputs {logits_width} logits but the data has {num_classes} "
                                 "classes; accept a num_classes argument or set it in params")
    return model


@torch.no_grad()
def _logit_width(model: FeatureModel, in_channels: int, image_size: int, spec: str, field: str) -> int:
    """Logit width from one eval-mode pass through ``features`` (which must work)."""
    was = model.training
    model.eval()
    try:
        f = model.features(torch.zeros(1, in_channels, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - a user model failing its dry run is a config problem
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError(field, f"{spec} failed on a dry run: {msg}") from None
    finally:
        model.train(was)
    if f.logits.dim() != 2:
        raise ConfigError(field, f"{spec} returns logits of shape {tuple(f.logits.shape)}; expected (B, classes)")
    return int(f.logits.shape[1])
