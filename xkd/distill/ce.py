"""``ce``: the baseline student, trained on the task loss only (no teacher).

Cross-entropy for classification; MSE (default) or L1 for regression tasks (``context.task``).
"""

from __future__ import annotations

from typing import Literal

import torch

from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.losses import task_loss
from xkd.models.base import FeatureModel


class CEParams(MethodParams):
    regression_loss: Literal["mse", "l1"] = "mse"
    """Loss used when the task is regression (ignored for classification)."""


@METHODS.register("ce", params=CEParams, needs_teacher=False, any_input=True)
class CEDistiller(Distiller):
    """No distillation: the student learns from the labels alone (losses: ``ce``); it reads the
    batch key ``student_key`` (``image`` unless the student has another modality)."""

    reads_features = False  # logits only: any nn.Module classifier will do

    needs_teacher = False

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: CEParams,
                 context: DistillContext) -> None:
        super().__init__(student, teacher, params, context)
        self.task = context.task

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        logits = self.student(batch[self.student_key])
        loss = task_loss(logits, batch["label"], self.task, self.params.regression_loss)
        return StepOutput(logits=logits, losses={"ce": loss})
