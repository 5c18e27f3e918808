"""Prediction fidelity between a student and its teacher (reference/xai_metrics.md §3.7).

``logits`` are the evaluated model's (the student), ``second_logits`` the reference model's (the
teacher), both (N, K).

- top-1 agreement (Stanton et al., NeurIPS 2021; e2KD's ``eval_agree_acc1``): 1 where both
  argmaxes match, else 0; higher is better.
- KL(p_T || p_S) = sum_k p_T,k (log p_T,k - log p_S,k) with temperature ``temperature`` on both
  (Hinton et al. 2015 form, without the T^2 factor); lower is better.
"""

from __future__ import annotations

import torch
from pydantic import Field

from xkd.errors import UserError
from xkd.metrics.base import MetricParams, MetricResult, register_metric


def _check(logits: torch.Tensor, second_logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape != second_logits.shape:
        raise UserError(f"logits {tuple(logits.shape)} and second_logits "
                        f"{tuple(second_logits.shape)} must both be (N, K)")


class AgreementParams(MetricParams):
    pass


def agreement(logits: torch.Tensor, second_logits: torch.Tensor) -> MetricResult:
    """1.0 where the two models' top-1 classes agree."""
    _check(logits, second_logits)
    return MetricResult((logits.argmax(1) == second_logits.argmax(1)).double().cpu())


class KLParams(MetricParams):
    temperature: float = Field(1.0, gt=0)


def kl_divergence(logits: torch.Tensor, second_logits: torch.Tensor, *,
                  temperature: float = 1.0) -> MetricResult:
    """KL(p_reference || p_evaluated) per sample, in nats."""
    _check(logits, second_logits)
    log_s = torch.log_softmax(logits.detach().double() / temperature, dim=1)
    log_t = torch.log_softmax(second_logits.detach().double() / temperature, dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return MetricResult(kl.clamp(min=0).cpu(), info={"temperature": temperature})


_common = dict(category="prediction", needs=("logits", "second_logits"))
register_metric("agreement", agreement, AgreementParams, higher_is_better=True,
                description="Top-1 teacher-student agreement (Stanton et al., NeurIPS 2021)", **_common)
register_metric("kl_divergence", kl_divergence, KLParams, higher_is_better=False,
                description="KL(p_teacher || p_student) (Hinton et al. 2015)", **_common)
