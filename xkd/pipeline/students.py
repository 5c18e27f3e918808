"""Stage: one student, built with its method and trained with the engine (DESIGN section 3.4)."""

from __future__ import annotations

from typing import Any

from xkd.distill import DistillContext, Distiller, build_distiller, dataset_labels
from xkd.engine import is_main_process
from xkd.models import FeatureModel
from xkd.pipeline.checks import method_params
from xkd.pipeline.context import RunContext, build_model_for, n_params, train_model
from xkd.pipeline.multimodal_teachers import student_inputs
from xkd.pipeline.teacher_saliency import saliency_extras, weight_map_quality


def train_student(ctx: RunContext, i: int, teacher: FeatureModel | None, named: dict[str, Any] | None = None
                  ) -> tuple[FeatureModel, Distiller, dict[str, Any]]:
    sc = ctx.cfg.students[i]
    path = f"students[{i}]"
    bundle = ctx.data(sc.data)
    student = build_model_for(sc.model, bundle, f"{path}.model", ctx.seed, sc.modality)
    train = ctx.cfg.train_for(sc.train)
    teacher, mm = student_inputs(ctx, sc, bundle, teacher, named or {})
    context = DistillContext(example=bundle.train[0][sc.modality].unsqueeze(0),
                             num_classes=bundle.num_classes, task=bundle.task, epochs=train.epochs,
                             dataset_size=len(bundle.train),
                             extras={"path": path, "explain": ctx.cfg.explain,  # labels by train index (hkd)
                                     "labels": dataset_labels(bundle.train), **mm})
    d = build_distiller(sc.method, student, teacher, method_params(sc), context)
    extras = saliency_extras(ctx, d, teacher, bundle, f"{path}.params") if teacher is not None else None
    info = {"params": n_params(student), "arch": sc.model.name or sc.model.factory,
            "method": sc.method}
    if extras and bundle.has_masks and is_main_process():
        info.update(weight_map_quality(extras["saliency"], bundle.train))
    train_data = None
    if d.uses_fake_data:  # cGAN-KD: real + processed fakes (xkd.pipeline.generated)
        from xkd.pipeline.generated import fake_training_set, init_from_student

        train_data, cinfo = fake_training_set(ctx, i, d.params, teacher, bundle)
        info.update(cinfo)
        if d.params.init_from is not None:
            init_from_student(ctx, student, d.params.init_from, f"{path}.params")
    info.update(train_model(ctx, d, bundle, train, ctx.folder.student(sc.name), extras, sc.name, train_data))
    return student, d, info
