"""The distiller contract (DESIGN section 3.4), mdistiller-style.

``Distiller.forward(batch, epoch)`` returns :class:`StepOutput`: the student's logits and a dict
of named loss tensors that the engine sums, logs and optimises. The teacher is frozen and always in
eval mode; ``extra_modules()`` are trained with the student (e.g. ReviewKD's ABFs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from xkd.models.base import FeatureModel
from xkd.registry import Registry

METHODS: Registry["Distiller"] = Registry("method")
"""Method factories: ``cls(student, teacher, params, context)`` with a pydantic ``params`` model."""


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class DistillContext:
    """What a distiller may need to know when it is built.

    ``example`` is one training image batch (1,C,H,W) for dry runs; ``num_classes`` and ``task``
    come from the DataBundle; ``epochs`` is the student's epoch budget (for warm-ups);
    ``dataset_size`` sizes memory banks. ``extras['student_key']`` / ``extras['teacher_key']``
    name the batch keys the student and the teacher read (default ``image``; multi-modal plumbing,
    docs/CONTRACTS.md); ``extras['teachers']`` holds named teachers for multi-teacher methods.
    """

    example: torch.Tensor
    num_classes: int
    task: str = "classification"
    epochs: int = 1
    dataset_size: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """One training step: student logits plus named losses (summed by the engine)."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


class Distiller(nn.Module):
    """Base distiller: holds the student and a frozen teacher (which may be ``None``).

    Subclasses implement :meth:`forward`; they may override :meth:`extra_modules`,
    :attr:`needs_saliency` and :meth:`attention_maps` (for the per-stage export).
    """

    needs_teacher: bool = True
    needs_saliency: bool = False

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: MethodParams,
                 context: DistillContext) -> None:
        super().__init__()
        self.student = student
        self.params = params
        self.student_key: str = str(context.extras.get("student_key", "image"))
        self.teacher_key: str = str(context.extras.get("teacher_key", "image"))
        # The teacher is kept out of the module tree so it is never optimised, saved with the
        # student or wrapped in DDP.
        object.__setattr__(self, "teacher", teacher)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def teacher_input_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-sample presence (B,) of the teacher's input, ``batch['<teacher_key>_mask']`` (e.g.
        ``audio_mask`` of ``av_shapes``), or None when the dataset never lacks it."""
        return batch.get(f"{self.teacher_key}_mask")

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    def extra_modules(self) -> list[nn.Module]:
        """Modules trained with the student (adapters, fusion blocks...)."""
        return []

    def trainable_modules(self) -> nn.ModuleDict:
        """Student plus extra modules, the unit the engine optimises and checkpoints."""
        return nn.ModuleDict({"student": self.student,
                              "extra": nn.ModuleList(self.extra_modules())})

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-stage attention maps for the viewer (name -> (B,K,h,w)); none by default."""
        return {}


def list_methods() -> list[str]:
    """Every registered distillation method."""
    import xkd.distill  # noqa: F401

    return METHODS.names()
