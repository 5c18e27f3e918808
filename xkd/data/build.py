"""``build_data``: the one entry point from a ``data`` config section to a :class:`DataBundle`.

Every dataset factory has the same signature ``factory(params, cfg, seed) -> DataBundle`` where
``params`` is the validated instance of the pydantic model registered with it (or the raw dict
when none is registered), ``cfg`` the :class:`~xkd.config.DataConfig` (root, download, augment)
and ``seed`` the data seed.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from xkd.config import DataConfig, _error_from_validation
from xkd.data.base import DATASETS, DataBundle


def validate_params(name: str, params: Mapping[str, Any], path: str = "data.params") -> Any:
    """Validate dataset params with the registered schema; errors become ConfigError at ``path``."""
    entry = DATASETS.entry(name, path="data.name")
    if entry.params is None:
        return dict(params)
    try:
        return entry.params.model_validate(dict(params))
    except ValidationError as e:
        raise _error_from_validation(e, path, entry.params) from None


def identity(name: str, params: Any, seed: int, root: str | None = None) -> str:
    """Stable string naming the data content: name, canonical params JSON, seed (and root)."""
    dumped = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    text = f"{name}|{json.dumps(dumped, sort_keys=True, separators=(',', ':'))}|seed={seed}"
    return text + (f"|root={root}" if root is not None else "")


def build_data(cfg: DataConfig, seed: int, overrides: Mapping[str, Any] | None = None,
               path: str = "data.params") -> DataBundle:
    """Build the dataset named ``cfg.name`` with ``cfg.params`` updated by ``overrides`` (a
    student's per-dataset overrides, e.g. ``{"decoy": None}``); ``path`` names the params in
    errors (e.g. ``students[1].data``)."""
    import xkd.data  # noqa: F401  (registers the built-ins)

    entry = DATASETS.entry(cfg.name, path="data.name")
    params = validate_params(cfg.name, {**cfg.params, **(overrides or {})}, path)
    bundle = entry.factory(params=params, cfg=cfg, seed=seed)
    uses_root = bool(entry.meta.get("content_from_root", False))
    bundle.identity = identity(cfg.name, params, seed, cfg.root if uses_root else None)
    return bundle
