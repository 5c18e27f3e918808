"""``kd``: Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network".

L = (1 − α) · CE(z_s, y) + α · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))   (KL: ``batchmean``).
The returned losses ``ce`` and ``kd`` are already weighted by (1 − α) and α.
"""

from __future__ import annotations

import torch
from pydantic import Field

from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.losses import kd_loss, task_loss
from xkd.errors import UserError
from xkd.models.base import FeatureModel


class KDParams(MethodParams):
    T: float = Field(4.0, gt=0, description="softmax temperature")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; CE gets 1 - alpha")


def require_classification(method: str, context: DistillContext) -> None:
    """Logit KD needs class probabilities: refuse regression tasks with one clear line."""
    if context.task != "classification":
        raise UserError(f"method '{method}' needs a classification task, got task "
                        f"'{context.task}'; use 'ce' or 'reviewkd' for regression")


@METHODS.register("kd", params=KDParams, needs_teacher=True, any_input=True, tasks=("classification",))
class KDDistiller(Distiller):
    """Hinton KD on temperature-softened logits (losses: ``ce``, ``kd``). Teacher and student may
    read different batch keys (``teacher_key``, ``student_key``): cross-modal KD on one label space;
    samples whose teacher input is missing (``<teacher_key>_mask`` = 0) are left out of the KD term."""

    reads_features = False  # logits only: any nn.Module classifier will do

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: KDParams,
                 context: DistillContext) -> None:
        require_classification("kd", context)
        super().__init__(student, teacher, params, context)

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        p = self.params
        with torch.no_grad():
            t_logits = self.teacher(batch[self.teacher_key])
        logits = self.student(batch[self.student_key])
        losses = {"ce": (1.0 - p.alpha) * task_loss(logits, batch["label"]),
                  "kd": p.alpha * kd_loss(logits, t_logits, p.T, self.teacher_input_mask(batch))}
        return StepOutput(logits=logits, losses=losses)
