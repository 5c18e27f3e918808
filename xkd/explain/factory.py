"""Build explainers by name (``xkd.explain.build``) or from the ``explain`` config section."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from torch import nn

from xkd.config import ExplainConfig, _error_from_validation
from xkd.explain.base import EXPLAINERS
from xkd.explain.explainers import Explainer


def build(method: str, model: nn.Module, max_batch: int = 64, path: str = "explain",
          **params: Any) -> Explainer:
    """An :class:`Explainer` for ``model``; ``params`` are validated against the method's schema.

    Unknown methods raise :class:`~xkd.errors.UnknownNameError` (``{path}.method``), bad
    parameters :class:`~xkd.errors.ConfigError` (``{path}.params.<field>``).
    """
    return _build(method, model, params, max_batch, path)


def _build(method: str, model: nn.Module, params: dict[str, Any], max_batch: int,
           path: str) -> Explainer:
    entry = EXPLAINERS.entry(method, path=f"{path}.method")
    try:
        p = entry.params.model_validate(params) if entry.params is not None else params
    except ValidationError as e:
        raise _error_from_validation(e, f"{path}.params", entry.params) from None
    return entry.factory(model=model, params=p, max_batch=max_batch, path=path)


def build_from_config(cfg: ExplainConfig, model: nn.Module, path: str = "explain") -> Explainer:
    """The explainer that ``cfg`` (method, params, max_batch) describes."""
    return _build(cfg.method, model, dict(cfg.params), cfg.max_batch, path)


def list_explainers() -> list[str]:
    """Every registered explainer name."""
    return EXPLAINERS.names()
