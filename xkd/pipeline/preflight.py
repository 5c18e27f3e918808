"""Check everything that can be checked before a run folder is created.

Builds the data, every model, every distiller (ReviewKD adapters come from a dry run) and every
explainer the experiment names, on untrained weights. A mistake that would otherwise surface after
an hour of teacher training (a Grad-CAM layer that does not exist, a pair without spatial stages)
becomes one line and exit code 2 before anything is written.
"""

from __future__ import annotations

from typing import Any

from xkd.config import ExperimentConfig, ExplainConfig
from xkd.pipeline.checks import method_params
from xkd.pipeline.teacher_saliency import warn_if_constant_maps
from xkd.data import build_data
from xkd.distill import DistillContext, build_distiller, dataset_labels
from xkd.errors import UserError
from xkd.models import build as build_model


def preflight(cfg: ExperimentConfig, smoke: bool = False) -> None:
    """Raise a :class:`UserError` for the first problem found; return quietly when all is well."""
    from xkd.explain import build_from_config

    bundles: dict[str, Any] = {}

    def data(over: dict[str, Any]) -> Any:
        key = repr(sorted(over.items()))
        if key not in bundles:
            bundles[key] = build_data(cfg.data, cfg.seed, over or None)
        return bundles[key]

    from xkd.pipeline.multimodal import is_multimodal

    if is_multimodal(cfg):  # named teachers / video or audio inputs (issue 7)
        from xkd.pipeline.multimodal_preflight import preflight_multimodal

        return preflight_multimodal(cfg, data)
    main = data({})
    teacher = None
    if cfg.teacher is not None:
        tb = data(cfg.teacher.data)
        teacher = build_model(cfg.teacher.model, num_classes=tb.num_classes, in_channels=tb.in_channels,
                              image_size=tb.image_size, path="teacher.model")
        teacher.eval()
        example = tb.train[0]["image"].unsqueeze(0)
        for i, m in enumerate(cfg.evaluate.explainers):  # regression runs export them too
            ex = build_from_config(ExplainConfig(method=m), teacher, path=f"evaluate.explainers[{i}]")
            warn_if_constant_maps(ex, example, f"evaluate.explainers[{i}]",
                                  "the explanation metrics and the viewer compare constant maps",
                                  "use larger images or another explainer there (e.g. saliency)")
        build_from_config(cfg.explain, teacher, path="explain")
    for i, sc in enumerate(cfg.students):
        path = f"students[{i}]"
        b = data(sc.data)
        if teacher is not None and (b.num_classes != main.num_classes):
            raise UserError(f"{path}.data: changes num_classes; students and teacher must share classes")
        student = build_model(sc.model, num_classes=b.num_classes, in_channels=b.in_channels,
                              image_size=b.image_size, path=f"{path}.model")
        ctx = DistillContext(example=b.train[0]["image"].unsqueeze(0), num_classes=b.num_classes,
                             task=b.task, epochs=cfg.train_for(sc.train).epochs,
                             dataset_size=len(b.train), extras={"path": path, "explain": cfg.explain,
                                                                "labels": dataset_labels(b.train)})  # hkd
        d = build_distiller(sc.method, student, teacher, method_params(sc), ctx)
        if d.uses_fake_data and d.params.fake_data is not None:
            from xkd.gan.fakeset import load_fake_set  # cGAN-KD: a file for this data?

            load_fake_set(d.params.fake_data, b, f"{path}.params.fake_data")
        spec = d.saliency_spec() if d.needs_saliency else None
        if spec is not None and teacher is not None:
            merged = cfg.explain.model_dump()
            merged.update({k: v for k, v in spec.items() if v is not None and k != "read_size"})
            try:
                ecfg = ExplainConfig.model_validate(merged)
            except Exception as e:  # noqa: BLE001
                raise UserError(f"{path}.params.explainer: {str(e).splitlines()[-1]}") from None
            ex = build_from_config(ecfg, teacher, path=f"{path}.params.explainer")
            if ecfg.cache:  # explain.storage_size against the image size, before any training
                from xkd.explain.storage import resolve as storage_size

                storage_size(ecfg.storage_size, ex, b.train[0]["image"], spec.get("read_size"))
            warn_if_constant_maps(ex, b.train[0]["image"].unsqueeze(0), "explain" if not
                                  (sc.params or {}).get("explainer") else f"{path}.params.explainer",
                                  f"the saliency weighting of {path} does nothing (plain ReviewKD)")
