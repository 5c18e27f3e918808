"""Teacher saliency for the students that ask for it (DESIGN 3.3-3.5): a validated cache of the
train split's maps or an online explainer, and how well the weighting maps sit on the objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from xkd.config import ExplainConfig
from xkd.data import DataBundle
from xkd.distill import Distiller
from xkd.engine import is_main_process
from xkd.errors import UserError
from xkd.models import FeatureModel

if TYPE_CHECKING:
    from xkd.pipeline.context import RunContext


def saliency_extras(ctx: "RunContext", d: Distiller, teacher: FeatureModel, bundle: DataBundle,
                    path: str) -> dict[str, Any] | None:
    """Attach the teacher saliency a distiller asks for: a cache, or an online explainer."""
    spec = d.saliency_spec() if d.needs_saliency else None
    if spec is None:
        return None
    from xkd.explain import SaliencyCache, build_from_config

    ecfg = explain_config(ctx.cfg.explain, spec, path)
    if not ecfg.cache:
        d.set_teacher_explainer(build_from_config(ecfg, teacher, path=f"{path}.explainer"), ecfg.target)
        return None
    _barrier()
    cache = None
    if is_main_process():
        cache = SaliencyCache.build_or_load(ctx.folder.saliency, teacher, bundle.train, ecfg,
                                            bundle.identity, ctx.device, batch_size=ecfg.max_batch)
    _barrier()
    if cache is None:
        cache = SaliencyCache.build_or_load(ctx.folder.saliency, teacher, bundle.train, ecfg,
                                            bundle.identity, ctx.device, batch_size=ecfg.max_batch)
    return {"saliency": cache}


def explain_config(base: ExplainConfig, spec: dict[str, Any] | None, path: str) -> ExplainConfig:
    merged = base.model_dump()
    for k, v in (spec or {}).items():
        if v is not None:
            merged[k] = v
    try:
        return ExplainConfig.model_validate(merged)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}.explainer: {str(e).splitlines()[-1]}") from None


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def weight_map_quality(cache: Any, dataset: Dataset, tolerance: float = 2.0) -> dict[str, float]:
    """How well the weighting maps of the training split sit on the objects (teacher map quality):
    relevance mass accuracy and pointing game of the cached maps against the ground-truth masks."""
    from xkd.metrics.localisation import pointing_game, relevance_mass_accuracy

    masks = torch.stack([dataset[i]["mask"] for i in range(len(dataset))])
    maps = torch.from_numpy(cache.array[: len(dataset)].astype("float32"))
    return {"weight_map_relevance_mass": relevance_mass_accuracy(maps, masks).mean(),
            "weight_map_pointing_game": pointing_game(maps, masks, tolerance=tolerance).mean()}
