"""Teacher saliency for the students that ask for it (DESIGN 3.3-3.5): a validated cache of the
train split's maps or an online explainer, and how well the weighting maps sit on the objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from xkd.config import ExplainConfig
from xkd.data import DataBundle
from xkd.distill import Distiller
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
    # every rank explains its share of the split (a collective; xkd.explain.cache_build)
    read_size = spec.get("read_size")
    cache = SaliencyCache.build_or_load(ctx.folder.saliency, teacher, bundle.train, ecfg,
                                        bundle.identity, ctx.device, batch_size=ecfg.max_batch,
                                        num_workers=ctx.cfg.data.num_workers,
                                        read_size=tuple(read_size) if read_size else None)
    return {"saliency": cache}


def explain_config(base: ExplainConfig, spec: dict[str, Any] | None, path: str) -> ExplainConfig:
    merged = base.model_dump()
    for k, v in (spec or {}).items():
        if v is not None and k != "read_size":  # read_size: the consumer's finest level
            merged[k] = v
    try:
        return ExplainConfig.model_validate(merged)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}.explainer: {str(e).splitlines()[-1]}") from None


def weight_map_quality(cache: Any, dataset: Dataset, tolerance: float = 2.0,
                       chunk: int = 256) -> dict[str, float]:
    """How well the weighting maps of the training split sit on the objects (teacher map quality):
    relevance mass accuracy and pointing game of the cached maps (at the image size, as training
    reads them; ``cache.batch``) against the ground-truth masks, ``chunk`` samples at a time."""
    from xkd.metrics.localisation import pointing_game, relevance_mass_accuracy

    n = len(dataset)
    mass, game = [], []
    for i in range(0, n, chunk):
        rows = range(i, min(n, i + chunk))
        masks = torch.stack([dataset[j]["mask"] for j in rows])
        maps = cache.batch(rows)
        mass.append(relevance_mass_accuracy(maps, masks).values)
        game.append(pointing_game(maps, masks, tolerance=tolerance).values)
    return {"weight_map_relevance_mass": float(torch.nanmean(torch.cat(mass))),
            "weight_map_pointing_game": float(torch.nanmean(torch.cat(game)))}
