"""xkd: explanation-guided knowledge distillation for PyTorch.

A frozen teacher is explained with Captum; its saliency maps weight ReviewKD's review losses
through which a small student learns from it. The public API for your own training loop (README,
"Use it in your own training loop"):

- :func:`wrap` (``xkd.models.hooked.wrap``): any ``nn.Module`` classifier as a model with stage
  features;
- :func:`build_distiller`, :class:`DistillContext`, :class:`Distiller`, :func:`list_methods`
  (``xkd.distill``): a registered method around a student and a frozen teacher; its
  ``configure_optimizers()`` builds the method's optimisers;
- :mod:`xkd.explain` (``xkd.explain.build``): Captum explainers behind one ``explain`` verb;
- :mod:`xkd.losses`: the plain loss functions (KD, HCL, weighted HCL).

Names are imported on first use, so ``import xkd`` (and ``python -m xkd.run --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
FORMAT_VERSION = 1
"""Version written into every file of a run folder (``format_version``)."""

_LAZY = {
    "wrap": ("xkd.models.hooked", "wrap"),
    "build_model": ("xkd.models", "build"),
    "build_distiller": ("xkd.distill", "build_distiller"),
    "DistillContext": ("xkd.distill", "DistillContext"),
    "Distiller": ("xkd.distill", "Distiller"),
    "StepOutput": ("xkd.distill", "StepOutput"),
    "list_methods": ("xkd.distill", "list_methods"),
    "explain": ("xkd.explain", None),
    "losses": ("xkd.losses", None),
}

__all__ = ["FORMAT_VERSION", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """PEP 562: the public API's names, imported on first access."""
    if name not in _LAZY:
        raise AttributeError(f"module 'xkd' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
