"""``cgan_kd``: cGAN-KD (Ding, Wang, Xu, Wang, Welch, ESWA 2023; seed_methods.md section 5).

Knowledge moves through *data*: the student trains on the real set plus conditional-GAN samples
that cDR-RS subsampling kept (M1, section 5.3), the teacher filtered and, for regression, relabelled
(M2, section 5.4). The per-step objective is the base method's (M3, section 5.5: "cGAN-KD + X"), so
this distiller only wraps ``base`` and delegates forward, losses, extra modules and optimiser
groups to it. The fake set itself is built by the pipeline (:mod:`xkd.pipeline.generated`) before training.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from pydantic import Field, ValidationError
from torch import nn

from xkd.gan.config import FilterConfig
from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.errors import ConfigError, UserError
from xkd.models.base import FeatureModel


class CGANKDParams(MethodParams):
    """Params of ``cgan_kd``: the wrapped method and the fake set's size and processing (M1/M2)."""

    base: str = Field("ce", description="the method whose objective trains the student (ce, kd, "
                      "reviewkd, ...): 'cGAN-KD + base'")
    base_params: dict[str, Any] = Field(default_factory=dict, description="params of the base method")
    fake_size: int = Field(1000, ge=0, description="processed fakes added to the real training set: "
                           "class-balanced (classification) or on equally spaced labels (regression); "
                           "0 = the same fine-tuning on real data only (a control)")
    subsample: bool = Field(True, description="cDR-RS subsampling (false: the ablation without it)")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="teacher filtering; "
                                 "relabel applies to regression")
    init_from: str | None = Field(None, description="an earlier student whose best checkpoint the "
                                  "student is fine-tuned from (the reference fine-tunes the vanilla student)")
    fake_data: str | None = Field(None, description="a processed fake-set .npz written by xkd "
                                  "(RUN/cgan/fake_*.npz) to use instead of generating one")


@METHODS.register("cgan_kd", params=CGANKDParams, needs_teacher=True,
                  tasks=("classification", "regression"), uses_fake_data=True)
class CGANKDDistiller(Distiller):
    """Delegates every step to the base distiller; the training set carries the fakes."""

    reads_features = False  # the wrapped base method checks its own models

    uses_fake_data = True

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: CGANKDParams,
                 context: DistillContext) -> None:
        super().__init__(student, teacher, params, context)
        from xkd.distill import _validation_error, build_distiller

        where = str(context.extras.get("path", "cgan_kd"))
        if params.base == "cgan_kd":
            raise ConfigError(f"{where}.params.base", "'cgan_kd' cannot wrap itself; use ce, kd, "
                              "reviewkd, ...")
        entry = METHODS.entry(params.base, path=f"{where}.params.base")
        base_params: Any = params.base_params
        if entry.params is not None:
            try:
                base_params = entry.params.model_validate(params.base_params)
            except ValidationError as e:  # the path the user wrote: params.base_params.<field>
                raise _validation_error(e, f"{where}.params.base_params") from None
        inner = copy.copy(context)
        inner.extras = {**context.extras, "path": f"{where}.params.base"}
        base = build_distiller(params.base, student, teacher, base_params, inner)
        if base.needs_saliency and getattr(context.extras.get("explain"), "cache", False):
            raise UserError(f"{where}.params.base: '{params.base}' with teacher saliency needs "
                            "explain.cache: false under cgan_kd (fake samples have no cached map)")
        if base.uses_per_sample_state:
            raise ConfigError(f"{where}.params.base", f"'{params.base}' keeps per-sample state "
                              "(memory banks, target caches) indexed by the real training set, which "
                              "fake samples do not have; use ce, kd, reviewkd or e2kd")
        self.base = base
        self.task = context.task

    @property
    def needs_saliency(self) -> bool:  # type: ignore[override]
        return bool(self.base.needs_saliency)

    def saliency_spec(self) -> dict[str, Any] | None:
        return self.base.saliency_spec()  # type: ignore[operator]

    def set_teacher_explainer(self, explainer: Any, target_rule: str) -> None:
        self.base.set_teacher_explainer(explainer, target_rule)  # type: ignore[operator]

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        return self.base(batch, epoch)

    def extra_modules(self) -> list[nn.Module]:
        return self.base.extra_modules()

    def trainable_modules(self) -> nn.ModuleDict:
        return self.base.trainable_modules()

    def param_groups(self) -> list[dict[str, Any]]:
        return self.base.param_groups()

    def optimizer_groups(self) -> dict[str, dict[str, Any]]:
        return self.base.optimizer_groups()

    @property
    def ddp_find_unused_parameters(self) -> bool:  # type: ignore[override]
        return bool(self.base.ddp_find_unused_parameters)

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.base.attention_maps(images)
