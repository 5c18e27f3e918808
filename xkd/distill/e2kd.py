"""``e2kd``: explanation-enhanced KD (Parchami-Araghi, Böhle, Rao, Schiele, "Good Teachers Explain",
ECCV 2024, arXiv 2402.03119; reference notes 7.6):

L = ce_weight · CE + kd_weight · [T² · KL(p_T^T ‖ p_S^T) + lambda_exp · (1 − cos(E_S, E_T))]

E is the Grad-CAM (ReLU) of the **teacher's top-1 class** at each model's last stage, bilinearly
upsampled to the input size, flattened per sample for the cosine. The student's map is
differentiable (double backprop through ``torch.autograd.grad(create_graph=True)``,
``xkd.distill.gradcam.differentiable_gradcam``); the teacher's is Captum's LayerGradCam, detached.

Defaults: the paper's shipped run uses GT weight 0, KD weight 1, T = 1, lambda_exp = 1. xkd keeps
KD 1, T 1, lambda_exp 1 but uses ce_weight 1.0, because the toolkit's data sets are small and the
teachers imperfect (a pure-KD student inherits every teacher mistake). Set ce_weight 0 for the paper.
Losses returned: ``ce``, ``kd``, ``exp``, each already weighted; logs: ``exp_cos`` (mean cosine).
``explanation_shuffle`` is the control for "where the teacher looks" (issue 15): each sample's
map is aligned with the teacher's map of another sample of the batch (a derangement).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.distill.controls import derangement
from xkd.distill.gradcam import captum_gradcam, differentiable_gradcam
from xkd.distill.kd import require_classification
from xkd.losses import kd_loss, task_loss
from xkd.errors import UserError
from xkd.models.base import FeatureModel


def explanation_cosine(teacher: FeatureModel, x: torch.Tensor, target: torch.Tensor,
                       s_stage: torch.Tensor, s_logits: torch.Tensor,
                       perm: torch.Tensor | None = None) -> torch.Tensor:
    """cos(E_S, E_T) per sample (B,): the student's differentiable Grad-CAM at ``s_stage`` and the
    teacher's detached Captum Grad-CAM at its last stage, both upsampled to the input size; the
    e2KD loss is 1 − cos. ``perm``: sample i is compared with the teacher's map of sample
    ``perm[i]`` (the shuffled control). Also used by ``reviewkd``'s ``e2kd_weight``."""
    size = tuple(x.shape[-2:])
    with torch.enable_grad():
        e_s = differentiable_gradcam(s_stage, s_logits, target, size)
        e_t = captum_gradcam(teacher, teacher.stage_layers()[-1], x, target, size)
    if perm is not None:
        e_t = e_t[perm]
    return F.cosine_similarity(e_s.flatten(1).float(), e_t.flatten(1), dim=1, eps=1e-8)


class E2KDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="ground-truth CE weight (paper: 0)")
    kd_weight: float = Field(1.0, ge=0, description="weight of the bracket [KD + lambda_exp·explanation]")
    T: float = Field(1.0, gt=0, description="KD temperature (paper: 1)")
    lambda_exp: float = Field(1.0, ge=0, description="weight of 1 - cos(E_S, E_T) inside the bracket")
    target: Literal["teacher_top1", "label"] = Field(
        "teacher_top1", description="class explained for both models (paper: teacher top-1)")
    explanation_shuffle: bool = Field(
        False, description="control: align with the teacher's map of another sample of the batch")


@METHODS.register("e2kd", params=E2KDParams, needs_teacher=True, tasks=("classification",))
class E2KDDistiller(Distiller):
    """Hinton KD plus cosine alignment of student and teacher Grad-CAM maps."""

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: E2KDParams,
                 context: DistillContext) -> None:
        require_classification("e2kd", context)
        super().__init__(student, teacher, params, context)
        for name, model in (("student", student), ("teacher", teacher)):
            if not model.stage_layers():
                raise UserError(f"e2kd needs a {name} with convolutional stages for Grad-CAM")

    def explanations(self, x: torch.Tensor, target: torch.Tensor, s_stage: torch.Tensor,
                     s_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_S differentiable, E_T detached), both (B,1,H,W) at the input size."""
        size = tuple(x.shape[-2:])
        e_s = differentiable_gradcam(s_stage, s_logits, target, size)
        e_t = captum_gradcam(self.teacher, self.teacher.stage_layers()[-1], x, target, size)
        return e_s, e_t

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        p, x = self.params, batch["image"]
        with torch.no_grad():
            t_logits = self.teacher(x)
        target = t_logits.argmax(dim=1) if p.target == "teacher_top1" else batch["label"].long()
        perm = derangement(len(x), x.device) if p.explanation_shuffle and len(x) > 1 else None
        with torch.enable_grad():
            s_feat = self.student.features(x)
            cos = explanation_cosine(self.teacher, x, target, s_feat.stages[-1], s_feat.logits, perm)
        losses = {"ce": p.ce_weight * task_loss(s_feat.logits, batch["label"]),
                  "kd": p.kd_weight * kd_loss(s_feat.logits, t_logits, p.T),
                  "exp": (p.kd_weight * p.lambda_exp) * (1.0 - cos).mean()}
        return StepOutput(logits=s_feat.logits, losses=losses,
                          logs={"exp_cos": float(cos.detach().mean())})
