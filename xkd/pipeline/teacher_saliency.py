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
from xkd.errors import UserError, warn
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
    explainer = build_from_config(ecfg, teacher, path=f"{path}.explainer")
    d.saliency_source = explainer_source(explainer, bundle.train[0]["image"].unsqueeze(0).to(ctx.device))[0]
    if not ecfg.cache:
        d.set_teacher_explainer(explainer, ecfg.target)
        return None
    # every rank explains its share of the split (a collective; xkd.explain.cache_build)
    say = ctx.log if is_main_process() else (lambda *_: None)
    say(f"[xkd] stage teacher saliency: {ecfg.method} maps of {len(bundle.train)} training images "
        f"({ecfg.target}), cached in {ctx.folder.saliency}")
    read_size = spec.get("read_size")
    cache = SaliencyCache.build_or_load(ctx.folder.saliency, teacher, bundle.train, ecfg,
                                        bundle.identity, ctx.device, batch_size=ecfg.max_batch,
                                        num_workers=ctx.cfg.data.num_workers,
                                        read_size=tuple(read_size) if read_size else None)
    say(f"[xkd] saliency cache {cache.key[:12]}: "
        + ("reused (built by an earlier run)" if cache.status == "loaded" else "built"))
    return {"saliency": cache}


def explainer_source(explainer: Any, x: torch.Tensor) -> tuple[str, tuple[int, int]]:
    """``explainer 'gradcam' at layer 'layer4', native map 1x1 on 32x32 images`` and the native
    size: the resolution at which the method resolves ``x`` (Grad-CAM: its layer's output)."""
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    native = explainer.native_size(x) or hw
    layer = getattr(explainer, "layer_name", None)
    text = (f"explainer '{explainer.method}'" + (f" at layer '{layer}'" if layer else "")
            + f", native map {native[0]}x{native[1]} on {hw[0]}x{hw[1]} images")
    return text, (int(native[0]), int(native[1]))


def warn_if_constant_maps(explainer: Any, x: torch.Tensor, where: str, effect: str,
                          fix: str | None = None) -> bool:
    """Warn (one line) when the explainer's native map is 1x1: every map it gives is constant,
    so it carries no location (e.g. Grad-CAM of tv:resnet18's last stage on 32 px images)."""
    text, native = explainer_source(explainer, x)
    if native != (1, 1):
        return False
    fix = fix or f"pick an earlier layer, e.g. {where}.params.layer: -2 (a stage index or a module name)"
    warn(f"{where}: {text}: every map is constant, so {effect}; {fix}")
    return True


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
