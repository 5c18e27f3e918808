"""The multi-modal stages of the experiment flow (issue 7): named teachers trained (or loaded)
into ``RUN/teachers/<name>/``, each student's input keys and teachers, and the extra evaluation
(the named teacher a student is compared with; retrieval R@1/R@5 with pooled embeddings, test
queries against the train gallery, as in CCL, Chen et al. CVPR 2021, section 4).
"""

from __future__ import annotations

from typing import Any

from xkd import io
from xkd.config import StudentConfig
from xkd.data import DataBundle
from xkd.distill import DistillContext, build_distiller
from xkd.distill.ccl import TeacherRef
from xkd.engine import is_main_process
from xkd.engine.retrieval import embed, recall_at_k
from xkd.models import FeatureModel
from xkd.pipeline.context import RunContext, build_model_for, n_params, train_model
from xkd.pipeline.multimodal import check_modalities, input_extras, is_multimodal, teacher_of


def train_named_teachers(ctx: RunContext) -> tuple[dict[str, TeacherRef], dict[str, dict[str, Any]]]:
    """Train (plain CE on its modality) or load every named teacher; frozen, eval, on the device.

    Also records every model's input key in ``ctx.keys`` when the run is multi-modal."""
    cfg = ctx.cfg
    if not is_multimodal(cfg):
        return {}, {}
    check_modalities(cfg, ctx.data())
    if cfg.teacher is not None:
        ctx.keys["teacher"] = cfg.teacher.modality
    refs: dict[str, TeacherRef] = {}
    infos: dict[str, dict[str, Any]] = {}
    for name, tc in (cfg.teachers or {}).items():
        bundle = ctx.data(tc.data)
        model = build_model_for(tc.model, bundle, f"teachers.{name}.model", ctx.seed, tc.modality)
        info: dict[str, Any] = {"role": "teacher", "method": "-", "modality": tc.modality,
                                "params": n_params(model), "arch": tc.model.name or tc.model.factory}
        out_dir = ctx.folder.root / "teachers" / name
        if tc.pretrained:
            info["source"] = tc.model.checkpoint
        else:
            train = cfg.train_for(tc.train)
            context = DistillContext(example=bundle.train[0][tc.modality].unsqueeze(0),
                                     num_classes=bundle.num_classes, task=bundle.task, epochs=train.epochs,
                                     dataset_size=len(bundle.train),
                                     extras={"path": f"teachers.{name}", "student_key": tc.modality})
            d = build_distiller("ce", model, None, {}, context)
            info.update(train_model(ctx, d, bundle, train, out_dir, None, f"teacher {name}"))
            if is_main_process():
                io.torch_save(out_dir / "checkpoint.pt", {"format_version": 1, "model": model.state_dict()})
        model.to(ctx.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        ctx.keys[name] = tc.modality
        refs[name], infos[name] = TeacherRef(model, tc.modality), info
    return refs, infos


def student_inputs(ctx: RunContext, sc: StudentConfig, bundle: DataBundle, teacher: FeatureModel | None,
                   named: dict[str, TeacherRef]) -> tuple[FeatureModel | None, dict[str, Any]]:
    """:func:`xkd.pipeline.multimodal.input_extras` for a run; records the student's key in ``ctx.keys``.
    Image-only runs get ``(teacher, {})``."""
    if not is_multimodal(ctx.cfg):
        return teacher, {}
    ctx.keys[sc.name] = sc.modality
    return input_extras(ctx.cfg, sc, bundle, teacher, named)


def multimodal_metrics(ctx: RunContext, models: dict[str, FeatureModel],
                       results: dict[str, dict[str, Any]]) -> None:
    """Add ``teacher`` (a student's named teacher; its ``test_agreement``/``test_kl`` against it
    come from :func:`xkd.pipeline.flow.evaluate_models`) and ``test_r1``/``test_r5`` (every model:
    test queries, train gallery, cosine) to ``results``."""
    if not is_multimodal(ctx.cfg):
        return
    bundle = ctx.data()
    bs = ctx.train_cfg(ctx.cfg.train).batch_size * 2
    key = (lambda n: ctx.keys.get(n, "image"))
    for sc in ctx.cfg.students:
        tname = teacher_of(ctx.cfg, sc)
        if tname is not None and sc.name in results:
            results[sc.name]["teacher"] = tname
    for name, model in models.items():
        q, ql = embed(model, bundle.test, ctx.device, bs, key(name))
        g, gl = embed(model, bundle.train, ctx.device, bs, key(name))
        results[name].update({f"test_{k}": v for k, v in recall_at_k(q, ql, g, gl, (1, 5)).items()})
        results[name]["modality"] = key(name)

