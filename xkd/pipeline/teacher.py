"""Stage: the teacher, loaded from a checkpoint (``pretrained: true``) or trained with cross-entropy."""

from __future__ import annotations

from typing import Any

from xkd import io
from xkd.distill import DistillContext, build_distiller
from xkd.engine import is_main_process
from xkd.models import FeatureModel
from xkd.pipeline.context import RunContext, build_model_for, n_params, train_model


def train_teacher(ctx: RunContext) -> tuple[FeatureModel | None, dict[str, Any]]:
    """Load a pretrained teacher, or train one from scratch with plain cross-entropy."""
    tc = ctx.cfg.teacher
    if tc is None:
        return None, {}
    bundle = ctx.data(tc.data)
    teacher = build_model_for(tc.model, bundle, "teacher.model", ctx.seed)
    info: dict[str, Any] = {"params": n_params(teacher), "arch": tc.model.name or tc.model.factory}
    if tc.pretrained:
        info["source"] = tc.model.checkpoint
    else:
        context = DistillContext(example=bundle.train[0]["image"].unsqueeze(0),
                                 num_classes=bundle.num_classes, task=bundle.task,
                                 epochs=ctx.cfg.train_for(tc.train).epochs, dataset_size=len(bundle.train))
        d = build_distiller("ce", teacher, None, {}, context)
        info.update(train_model(ctx, d, bundle, ctx.cfg.train_for(tc.train), ctx.folder.teacher, None,
                           "teacher"))
        if is_main_process():
            io.torch_save(ctx.folder.teacher / "checkpoint.pt",
                          {"format_version": 1, "model": teacher.state_dict()})
    teacher.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, info
