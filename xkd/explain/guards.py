"""Leave the explained model as it was; resolve Grad-CAM layers; check DeepLift can handle a model.

:func:`model_guard` runs the model in eval mode and, afterwards, restores every submodule's
train/eval flag, every parameter's ``.grad`` (``None`` stays ``None``) and removes any hook that
appeared during the call, whatever Captum did or raised. ``requires_grad`` flags are never touched.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from xkd.errors import ConfigError, UserError

HOOK_DICTS = (
    "_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
    "_backward_hooks", "_backward_pre_hooks",
)


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside; modes, grads, hooks and the full-backward-hook flag restored on exit."""
    modules = list(model.modules())
    modes = [m.training for m in modules]
    full_bw = [m.__dict__.get("_is_full_backward_hook", None) for m in modules]
    hooks = [{a: set(getattr(m, a, {}).keys()) for a in HOOK_DICTS} for m in modules]
    grads = [(p, p.grad) for p in model.parameters()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag, fb, before in zip(modules, modes, full_bw, hooks):
            m.training = flag
            for attr, keys in before.items():
                table = getattr(m, attr, None)
                if table is not None:
                    for k in [k for k in table if k not in keys]:
                        del table[k]
            if m.__dict__.get("_is_full_backward_hook", None) != fb:
                m._is_full_backward_hook = fb
        for p, g in grads:
            if p.grad is not g:
                p.grad = g


def resolve_layer(model: nn.Module, layer: int | str, path: str = "explain") -> tuple[nn.Module, str]:
    """The module named by ``layer``: an index into ``model.stage_layers()`` or a dotted name."""
    where = f"{path}.params.layer"
    names = dict(model.named_modules())
    stages = _stage_layers(model)
    if isinstance(layer, str) and layer not in names and layer.lstrip("-").isdigit():
        layer = int(layer)
    if isinstance(layer, int):
        if stages is None:
            raise ConfigError(where, f"index {layer} needs a model with stage_layers(); "
                              f"allowed: module names: {_some(names)}")
        if not -len(stages) <= layer < len(stages):
            raise ConfigError(where, f"stage index {layer} out of range; allowed: stage indices "
                              f"{-len(stages)}..{len(stages) - 1} or module names: {_some(names)}")
        mod = stages[layer]
        name = next((n for n, m in names.items() if m is mod), f"stage[{layer}]")
        return mod, name
    if layer == "" or layer not in names:
        idx = f"stage indices {-len(stages)}..{len(stages) - 1} or " if stages else ""
        raise ConfigError(where, f"unknown layer {layer!r}; allowed: {idx}module names: {_some(names)}")
    return names[layer], layer


def _stage_layers(model: nn.Module) -> list[nn.Module] | None:
    fn = getattr(model, "stage_layers", None)
    if fn is None:
        return None
    try:
        return list(fn())
    except NotImplementedError:
        return None


def _some(names: dict[str, Any], limit: int = 40) -> str:
    shown = [n for n in names if n]
    more = f", ... ({len(shown) - limit} more)" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


# --------------------------------------------------------------------------- DeepLift


def _supported_nonlinear() -> tuple[type, ...]:
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    return tuple(SUPPORTED_NON_LINEAR)


UNSUPPORTED_NONLINEAR: tuple[type, ...] = (
    nn.GELU, nn.SiLU, nn.Mish, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.PReLU, nn.SELU,
    nn.CELU, nn.LogSoftmax, nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.RReLU,
)
"""Non-linear modules that Captum's DeepLift would silently treat as plain gradients
(``nn.ReLU6`` is a Hardtanh)."""

FUNCTIONAL_NONLINEAR = {
    "relu", "relu_", "relu6", "elu", "elu_", "leaky_relu", "leaky_relu_", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "softplus", "softmax", "log_softmax", "gelu", "silu", "mish", "hardtanh",
    "hardtanh_", "hardswish", "hardsigmoid", "selu", "celu", "prelu", "threshold",
    "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
}


class _FunctionalSpy(TorchFunctionMode):
    """Records functional non-linearities called outside a non-linear module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = getattr(func, "__name__", "")
        if self.depth == 0 and name in FUNCTIONAL_NONLINEAR:
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def check_deeplift_model(model: nn.Module, x: torch.Tensor) -> None:
    """Raise :class:`UserError` when Captum's DeepLift would give wrong multipliers on ``model``.

    DeepLift's rescale rule (Shrikumar et al. 2017, Eq. 3) is applied per non-linearity *module*
    via hooks, so each must be a distinct module used once per forward pass; functional
    non-linearities (``F.relu``) or unsupported modules would silently fall back to gradients.
    One dry forward on one sample (eval mode, no grad) counts the calls.
    """
    supported = _supported_nonlinear()
    names = {m: n for n, m in model.named_modules()}
    for m, n in names.items():
        if isinstance(m, UNSUPPORTED_NONLINEAR) and not isinstance(m, supported):
            raise UserError(f"deeplift cannot handle module '{n}' ({type(m).__name__}): its rescale "
                            f"rule supports only {', '.join(t.__name__ for t in supported)}; "
                            "use another explainer (e.g. integrated_gradients)")
    paths: dict[nn.Module, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, supported):
            paths.setdefault(m, []).append(n)
    aliased = [" = ".join(f"'{p}'" for p in ps) for ps in paths.values() if len(ps) > 1]
    if aliased:  # Captum hooks such a module once per name and then fails or mis-assigns
        raise UserError("deeplift needs distinct activation modules, each registered once; "
                        f"registered under several names: {'; '.join(aliased)}; "
                        "untie them or use another explainer")
    calls: dict[nn.Module, int] = {}
    spy = _FunctionalSpy()
    handles = []

    def pre(mod: nn.Module, _inp: Any) -> None:
        calls[mod] = calls.get(mod, 0) + 1
        spy.depth += 1

    def post(_mod: nn.Module, _inp: Any, _out: Any) -> None:
        spy.depth -= 1

    try:
        for m in names:
            if isinstance(m, supported):
                handles.append(m.register_forward_pre_hook(pre))
                handles.append(m.register_forward_hook(post))
        with model_guard(model), torch.no_grad(), spy:
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    reused = [f"'{names[m]}' ({c}x)" for m, c in calls.items() if c > 1]
    if reused:
        more = f" and {len(reused) - 4} more" if len(reused) > 4 else ""
        raise UserError("deeplift needs distinct activation modules, each used once per forward; "
                        f"reused: {', '.join(reused[:4])}{more}; untie them or use another explainer")
    if spy.found:
        fns = sorted(set(spy.found))
        raise UserError("deeplift needs distinct activation modules (nn.ReLU, ...); the model "
                        f"calls functional {', '.join(fns)} in forward; use modules or another explainer")
