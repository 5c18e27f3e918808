"""``reviewkd``: ReviewKD (Chen, Liu, Zhao, Jia, CVPR 2021) and its saliency-weighted variant.

L = ce_weight · CE + review_weight · min(1, epoch / warmup_epochs) · Σ_j HCL(U_j, T_j)
    [+ kd_weight · T² · KL(p_t^T ‖ p_s^T)]                         (reference notes 1.2, 1.4, 1.7)

with a 0-indexed epoch, so the review term is exactly zero in the first epoch. ``warmup_epochs``
unset = min(20, epochs / 12): the official 20 of 240 epochs, scaled down for short schedules (a
fixed 20 with 10 epochs would keep the weight at most 0.45 all run; set explicitly that way, a
one-line warning says so). Taps (notes 1.5):
teacher pre-activation stages + pooled vector; student post-activation stages (``student_preact``
switches to pre-activation) + pooled vector. When the two models have different numbers of stages
the deepest min(n_s, n_t) stages are paired. The ABF chain (``xkd.distill.reviewkd.abf``) is built from dry
runs (:func:`xkd.models.base.describe`) on ``context.example``, for any channels and spatial sizes.

``saliency_mix`` a > 0 weights each spatial level's HCL per location by the teacher's saliency
(DESIGN 3.5, notes 7.2): see ``xkd.distill.reviewkd.weights`` and ``losses.weighted_hcl``. a = 0 is
plain ReviewKD. The pooled-vector level is a single location and therefore always unweighted.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from xkd.distill.controls import derangement
from xkd.distill.reviewkd.abf import ReviewChain
from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.losses import hcl, kd_loss, task_loss, warmup_factor, weighted_hcl
from xkd.distill.reviewkd.guidance import (GuidanceParams, attention_target, e2kd_term,
                                           fgd_attention, split_review)
from xkd.distill.reviewkd.fgbg import GlobalRelation
from xkd.distill.reviewkd.weights import SaliencyWeighting
from xkd.errors import UserError, warn
from xkd.models.base import Features, FeatureModel, describe


class ExplainerOverride(MethodParams):
    """Which teacher explanation weights the HCL; unset (None) fields inherit the experiment's
    ``explain`` section (same field names as :class:`xkd.config.ExplainConfig`)."""

    method: str | None = None
    target: Literal["label", "teacher_top1", "predicted"] | None = None
    params: dict[str, Any] | None = None
    cache: bool | None = None
    max_batch: int | None = Field(None, ge=1)


class ReviewKDParams(GuidanceParams):
    review_weight: float = Field(1.0, ge=0, description="λ of the review (HCL) term; the paper "
                                 "uses 0.6-8 on CIFAR (5 for most pairs), 1 on ImageNet")
    warmup_epochs: float | None = Field(
        None, ge=0, description="linear warm-up of the review term (0-indexed epochs; 0 = none); "
        "null = min(20, epochs / 12), the official CIFAR-100 20 of 240 epochs; a value above "
        "epochs - 1 never reaches full weight (a warning says so)")
    ce_weight: float = Field(1.0, ge=0, description="weight of the task loss (CE; MSE/L1 regression)")
    kd_weight: float = Field(0.0, ge=0, description="optional logit-KD term (off in the paper)")
    T: float = Field(4.0, gt=0, description="temperature of the optional KD term")
    student_preact: bool = Field(False, description="tap the student's pre-activation stages")
    mid_channels: int | None = Field(None, ge=1, description="ABF width; default min(512, "
                                     "student pooled width)")
    regression_loss: Literal["mse", "l1"] = "mse"
    saliency_mix: float = Field(0.0, ge=0, le=1, description="a: 0 = plain ReviewKD; W = (1-a) + a·M/mean(M)")
    saliency_shuffle: bool = Field(False, description="control: permute maps across the batch")
    gate_wrong: bool = Field(False, description="uniform weights where the teacher's top-1 is wrong")
    gate_diffuse: float | None = Field(None, gt=0, le=1, description="uniform weights where the "
                                       "map's normalised entropy exceeds this")
    saliency_levels: Literal["input", "per_stage"] = Field(
        "input", description="'input': one input-level map pooled to every level; 'per_stage': "
        "teacher Grad-CAM at each paired stage, computed online")
    explainer: ExplainerOverride | None = Field(
        None, description="teacher explainer/target for the weights; null = the experiment's explain")

    @model_validator(mode="after")
    def _per_stage_is_gradcam(self) -> "ReviewKDParams":
        if (self.saliency_levels == "per_stage" and self.explainer is not None
                and self.explainer.method not in (None, "gradcam")):
            raise ValueError(f"saliency_levels 'per_stage' uses the teacher's Grad-CAM at each "
                             f"stage; explainer.method must be 'gradcam' or unset, got "
                             f"'{self.explainer.method}'")
        if self.split and self.saliency_mix > 0:
            raise ValueError(f"fg_weight/bg_weight replace the saliency-weighted HCL; set "
                             f"saliency_mix to 0 (got {self.saliency_mix})")
        if self.saliency_adaptive is not None and self.saliency_mix == 0:
            raise ValueError("saliency_adaptive scales saliency_mix per sample; set saliency_mix > 0")
        if self.saliency_shuffle and not (self.saliency_mix > 0 or self.uses_maps() or self.e2kd_weight > 0):
            raise ValueError("saliency_shuffle is the control of a guidance term, but none is on; "
                             "set saliency_mix, fg_weight/bg_weight, attention_target_weight or "
                             "e2kd_weight > 0 (or drop saliency_shuffle)")
        return self


DEGENERATE_WARN_FRAC = 0.5
"""``epoch_end`` warns when more than this fraction of an epoch's teacher maps are degenerate."""
REFERENCE_WARMUP = (20.0, 240)
"""Official CIFAR-100 ReviewKD: warm-up 20 of 240 epochs (seed_methods.md 1.7)."""


def resolve_warmup(warmup: float | None, epochs: int, path: str) -> float:
    """The warm-up length in epochs: ``warmup``, or min(20, epochs / 12) when unset; warns once
    (one line naming the field) when the review term cannot reach full weight in ``epochs``.

    The factor of the last epoch (0-indexed ``epochs - 1``) is min(1, (epochs - 1) / warmup)."""
    ref_w, ref_e = REFERENCE_WARMUP
    w = min(ref_w, epochs * ref_w / ref_e) if warmup is None else float(warmup)
    if w > 0 and epochs - 1 < w:
        peak = warmup_factor(epochs - 1, w)
        field = f"{path}.warmup_epochs"
        what = (f"the review term is zero for the whole run ({epochs} epoch{'s' if epochs != 1 else ''}, "
                "the first epoch has factor 0)" if peak == 0 else
                f"the review weight reaches at most {peak:.2f} x review_weight (last epoch)")
        warn(f"{field}: warm-up {w:g} with {epochs} epochs: {what}; set {field} to at most "
             f"{max(epochs - 1, 0)} (0 = none) or train longer")
    return w


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@METHODS.register("reviewkd", params=ReviewKDParams, needs_teacher=True)
class ReviewKDDistiller(Distiller):
    """ReviewKD: ABF chain over student stages + HCL to teacher stages (losses: ``ce``, ``review``
    and, with ``kd_weight`` > 0, ``kd``)."""

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: ReviewKDParams,
                 context: DistillContext) -> None:
        super().__init__(student, teacher, params, context)
        p, self.task = params, context.task
        if self.task != "classification" and (p.kd_weight > 0 or p.gate_wrong or p.e2kd_weight > 0
                                              or p.saliency_adaptive == "confidence"):
            raise UserError(f"reviewkd: kd_weight > 0, e2kd_weight > 0, gate_wrong and "
                            f"saliency_adaptive 'confidence' need a classification task, "
                            f"got task '{self.task}'")
        ex = context.example if context.example.dim() == 4 else context.example.unsqueeze(0)
        s_info, s_pooled = describe(student, ex.to(_device(student)))
        t_info, t_pooled = describe(teacher, ex.to(_device(teacher)))
        if not s_info or not t_info:
            which = "student" if not s_info else "teacher"
            raise UserError(f"reviewkd needs spatial stage features, but the {which} exposes none; "
                            f"use a backbone with stages (e.g. resnet20, tv:resnet18)")
        k = min(len(s_info), len(t_info))
        self.n_levels = k
        self.student_stage_ids = list(range(len(s_info) - k, len(s_info)))
        self.teacher_stage_ids = list(range(len(t_info) - k, len(t_info)))
        s_sel, t_sel = s_info[-k:], t_info[-k:]
        self.level_sizes = [(t.height, t.width) for t in t_sel]
        mid = p.mid_channels or min(512, s_pooled)
        self.abfs = ReviewChain([s.channels for s in s_sel] + [s_pooled],
                                [t.channels for t in t_sel] + [t_pooled],
                                self.level_sizes + [(1, 1)], mid)
        self.global_relation = (GlobalRelation([t.channels for t in t_sel])
                                if p.fgd_global_weight > 0 else None)
        self.weighting: SaliencyWeighting | None = None
        if p.saliency_mix > 0 or p.uses_maps():
            self.weighting = SaliencyWeighting(p.saliency_mix, p.saliency_shuffle, p.gate_wrong,
                                               p.gate_diffuse, p.saliency_levels,
                                               self._target_rule(context), self.task,
                                               invert=p.saliency_invert, adaptive=p.saliency_adaptive)
        # The pipeline provides input-level saliency (cache or explainer); per-stage Grad-CAM is
        # computed here from the teacher itself.
        self.needs_saliency = self.weighting is not None and p.saliency_levels == "input"
        self.path = str(context.extras.get("path", "reviewkd"))
        self.warmup_epochs = resolve_warmup(p.warmup_epochs, context.epochs, f"{self.path}.params")
        self.saliency_source = ("the teacher's per-stage Grad-CAM" if p.saliency_levels == "per_stage"
                                else "the teacher's saliency maps")
        """Where the weighting maps come from, for messages (the pipeline names the explainer,
        its layer and its native map size: xkd.pipeline.teacher_saliency)."""
        self._warned_degenerate = False

    def _target_rule(self, context: DistillContext) -> str:
        if self.params.explainer is not None and self.params.explainer.target is not None:
            return self.params.explainer.target
        exp = context.extras.get("explain")
        target = exp.get("target") if isinstance(exp, dict) else getattr(exp, "target", None)
        return target or "teacher_top1"

    # -- pipeline hooks -----------------------------------------------------------------------
    def saliency_spec(self) -> dict[str, Any] | None:
        """Explainer settings the pipeline must provide (None-valued keys inherit ``explain``),
        plus ``read_size``: the finest size the weights read a map at (the largest level; None =
        the input size, since ``gate_diffuse`` and ``saliency_adaptive='concentration'`` take the
        entropy of the input-level map, which depends on its resolution)."""
        if not self.needs_saliency:
            return None
        ov = self.params.explainer or ExplainerOverride()
        finest = max(self.level_sizes, key=lambda s: s[0] * s[1])
        whole = self.params.gate_diffuse is not None or self.params.saliency_adaptive == "concentration"
        return {**ov.model_dump(), "read_size": None if whole else finest}

    def set_teacher_explainer(self, explainer: Any, target_rule: str) -> None:
        """Online input-level saliency: ``explainer.explain(x, target) -> (B,1,H,W)`` on the teacher."""
        if self.weighting is None:
            raise UserError("set_teacher_explainer: this reviewkd student has saliency_mix = 0")
        self.weighting.set_explainer(explainer, target_rule)

    def extra_modules(self) -> list[nn.Module]:
        return [self.abfs] + ([self.global_relation] if self.global_relation is not None else [])

    def epoch_end(self, row: dict[str, Any]) -> None:
        """Warn once when most of an epoch's teacher maps were all-zero or constant: their
        weights are uniform, so the weighted variant trained as plain ReviewKD (notes 7.2)."""
        frac = (row.get("logs") or {}).get("sal_degenerate_frac")
        if self._warned_degenerate or frac is None or frac <= DEGENERATE_WARN_FRAC:
            return
        self._warned_degenerate = True
        warn(f"{self.path}.params.saliency_mix: {frac:.0%} of epoch {row.get('epoch', '?')}'s "
             f"teacher maps are all-zero or constant ({self.saliency_source}), so their weights are "
             "uniform and the weighted review is plain ReviewKD; pick an earlier layer, e.g. "
             "explain.params.layer: -2 (or params.explainer.params.layer)")

    # -- taps and forward ---------------------------------------------------------------------
    def _student_taps(self, f: Features) -> list[torch.Tensor]:
        maps = f.preact if self.params.student_preact else f.stages
        return [maps[i] for i in self.student_stage_ids] + [f.pooled.flatten(1)[:, :, None, None]]

    def _teacher_taps(self, f: Features) -> list[torch.Tensor]:
        return [f.preact[i] for i in self.teacher_stage_ids] + [f.pooled.flatten(1)[:, :, None, None]]

    def review_losses(self, batch: dict[str, torch.Tensor], s_feat: Features, t_feat: Features
                      ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """HCL per level (shallow -> deep, pooled last) and saliency diagnostics."""
        p = self.params
        outs, atts = self.abfs(self._student_taps(s_feat))
        targets = [t.detach() for t in self._teacher_taps(t_feat)]
        extra: dict[str, torch.Tensor] = {}
        if p.fgd_attention_weight > 0 and p.fgd_temperature is not None:
            extra["fgd_attention"] = fgd_attention(outs[:-1], targets[:-1], p.fgd_temperature)
        if self.global_relation is not None:
            extra["fgd_global"] = self.global_relation(outs[:-1], targets[:-1])
        if self.weighting is None:
            return [hcl(u, t) for u, t in zip(outs, targets)], extra
        layers = None
        if p.saliency_levels == "per_stage":
            all_layers = self.teacher.stage_layers()
            layers = [all_layers[i] for i in self.teacher_stage_ids]
        maps = self.weighting.maps(batch, t_feat.logits, self.n_levels, self.teacher, layers)
        level_maps = self.weighting.oriented(maps if len(maps) == self.n_levels else maps * self.n_levels)
        if p.attention_target_weight > 0:
            extra["attention_target"] = attention_target(atts[:-1], level_maps)
        if p.split:
            levels, diag = split_review(outs[:-1], targets[:-1], level_maps, p)
        elif p.saliency_mix > 0:
            weights, diag = self.weighting.weights(batch, t_feat.logits, self.level_sizes,
                                                   self.teacher, layers, maps=maps)
            levels = [weighted_hcl(u, t, w) for u, t, w in zip(outs[:-1], targets[:-1], weights)]
        else:
            levels, diag = [hcl(u, t) for u, t in zip(outs[:-1], targets[:-1])], {}
        return levels + [hcl(outs[-1], targets[-1])], {**diag, **extra}

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        p, x = self.params, batch["image"]
        with torch.no_grad():
            t_feat = self.teacher.features(x)
        s_feat = self.student.features(x)
        levels, diag = self.review_losses(batch, s_feat, t_feat)
        warm = warmup_factor(epoch, self.warmup_epochs)
        losses = {"ce": p.ce_weight * task_loss(s_feat.logits, batch["label"], self.task,
                                                p.regression_loss),
                  "review": (p.review_weight * warm) * torch.stack(levels).sum()}
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(s_feat.logits, t_feat.logits, p.T)
        for name, weight in (("attention_target", p.attention_target_weight),
                             ("fgd_attention", p.fgd_attention_weight),
                             ("fgd_global", p.fgd_global_weight)):
            if name in diag:
                losses[name] = (weight * warm) * diag.pop(name)
        logs = {"review_warmup": warm}
        if p.e2kd_weight > 0:
            perm = derangement(len(x), x.device) if p.saliency_shuffle and len(x) > 1 else None
            exp, cos = e2kd_term(self.teacher, x, t_feat.logits.argmax(dim=1), s_feat.stages[-1],
                                 s_feat.logits, perm)
            losses["exp"], logs["exp_cos"] = p.e2kd_weight * exp, float(cos)
        if diag:
            values = torch.stack(list(diag.values())).tolist()
            logs.update(zip(diag.keys(), values))
        return StepOutput(logits=s_feat.logits, losses=losses, logs=logs)

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two ABF sigmoid maps per fused level: {"stage{j}": (B,2,h,w)}, j = the student's
        stage index (0-based, shallow -> deep), h×w = that student stage's size. Runs in eval
        mode (BatchNorm running statistics) and restores the previous mode."""
        modes = [m.training for m in (self.student, self.abfs)]
        self.student.eval()
        self.abfs.eval()
        try:
            _, atts = self.abfs(self._student_taps(self.student.features(images)))
        finally:
            self.student.train(modes[0])
            self.abfs.train(modes[1])
        return {f"stage{j}": a for j, a in zip(self.student_stage_ids, atts[:-1]) if a is not None}
