"""Preflight of a multi-modal experiment (issue 7): every check that needs the data, on untrained
models, before a run folder exists: modalities present in the dataset, some audio where audio is
used, every model runs on its modality's input (dry run), equal label spaces, and every distiller
builds (CCL checks embedding widths and teacher names there)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from xkd.config import ExperimentConfig, ModelConfig
from xkd.pipeline.checks import method_params
from xkd.data import DataBundle
from xkd.distill import DistillContext, build_distiller
from xkd.distill.ccl import TeacherRef
from xkd.errors import UserError
from xkd.models import FeatureModel, build as build_model
from xkd.pipeline.multimodal import check_modalities, input_extras, model_geometry


def _build(mc: ModelConfig, b: DataBundle, modality: str, path: str) -> FeatureModel:
    """Build the model for ``modality`` and run it once on one sample of that input."""
    cin, size = model_geometry(b, modality)
    model = build_model(mc, num_classes=b.num_classes, in_channels=cin, image_size=size, path=path)
    x = b.train[0][modality].unsqueeze(0)
    model.eval()
    try:
        with torch.no_grad():
            f = model.features(x)
    except (RuntimeError, ValueError, IndexError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{path}: '{mc.name or mc.factory}' cannot read the '{modality}' input of "
                        f"shape {tuple(x.shape[1:])}: {first}") from None
    if f.logits.shape[-1] != b.num_classes:
        raise UserError(f"{path}: gives {f.logits.shape[-1]} outputs, the dataset has {b.num_classes} classes")
    return model


def preflight_multimodal(cfg: ExperimentConfig, data: Callable[[dict[str, Any]], DataBundle]) -> None:
    """Raise one :class:`~xkd.errors.UserError` line for the first problem; quiet when all is well."""
    from xkd.distill import dataset_labels

    main = data({})
    check_modalities(cfg, main)
    named: dict[str, TeacherRef] = {}
    for name, tc in (cfg.teachers or {}).items():
        b = data(tc.data)
        if b.num_classes != main.num_classes:
            raise UserError(f"teachers.{name}.data: changes num_classes; teachers and students must "
                            "share one label space")
        named[name] = TeacherRef(_build(tc.model, b, tc.modality, f"teachers.{name}.model"), tc.modality)
    teacher = None
    if cfg.teacher is not None:
        teacher = _build(cfg.teacher.model, data(cfg.teacher.data), cfg.teacher.modality, "teacher.model")
    for i, sc in enumerate(cfg.students):
        path = f"students[{i}]"
        b = data(sc.data)
        if b.num_classes != main.num_classes:
            raise UserError(f"{path}.data: changes num_classes; students and teachers must share classes")
        student = _build(sc.model, b, sc.modality, f"{path}.model")
        t, extras = input_extras(cfg, sc, b, teacher, named)
        ctx = DistillContext(example=b.train[0][sc.modality].unsqueeze(0), num_classes=b.num_classes,
                             task=b.task, epochs=cfg.train_for(sc.train).epochs, dataset_size=len(b.train),
                             extras={"path": path, "explain": cfg.explain,
                                     "labels": dataset_labels(b.train), **extras})
        build_distiller(sc.method, student, t, method_params(sc), ctx)
