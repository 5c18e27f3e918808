"""Which class an explanation explains (DESIGN section 3.3; xai_metrics.md section 0.3, item 1).

``label``: the ground-truth class; ``teacher_top1``: the teacher's arg-max (the e2KD convention,
Parchami-Araghi et al. 2024); ``predicted``: the explained model's own arg-max (RISE's choice).
"""

from __future__ import annotations

import torch

from xkd.errors import UnknownNameError, UserError
from xkd.explain.base import TARGET_RULES


def resolve_targets(rule: str, labels: torch.Tensor | None, teacher_logits: torch.Tensor | None = None,
                    model_logits: torch.Tensor | None = None, path: str = "explain.target") -> torch.Tensor:
    """Class indices (B,) long for ``rule`` in :data:`TARGET_RULES`."""
    if rule not in TARGET_RULES:
        raise UnknownNameError("target rule", str(rule), list(TARGET_RULES), path)
    if rule == "label":
        if labels is None:
            raise UserError(f"{path}: rule 'label' needs the batch labels")
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex():
            raise UserError(f"{path}: rule 'label' needs integer class labels (got {labels.dtype}); "
                            "use 'teacher_top1' or 'predicted' for regression")
        return labels.long().reshape(-1)
    logits = teacher_logits if rule == "teacher_top1" else model_logits
    if logits is None:
        who = "teacher" if rule == "teacher_top1" else "explained model"
        raise UserError(f"{path}: rule '{rule}' needs the {who}'s logits")
    if logits.dim() != 2:
        raise UserError(f"{path}: logits must be (B, num_classes), got {tuple(logits.shape)}")
    return logits.detach().argmax(1)
