"""Further ways for ``reviewkd`` to use the teacher's explanation (issue 15), beside the per-location
weighting of ``saliency_mix`` (``weights``); every one is off by default.

* ``saliency_invert``: the weights follow 1 − M/max(M), i.e. where the teacher does *not* look
  (the mechanism test of issue 15; ``weights.invert_map``).
* ``saliency_adaptive``: a per-sample mix a_i = a · c_i, c_i the teacher's confidence (max softmax)
  or the map's concentration 1 − H(M/ΣM)/log N (``weights.adaptive_mix``).
* ``fg_weight``/``bg_weight``: HCL split by the teacher's map into a foreground and a background
  term, weighted by the teacher's spatial and channel attention (FGD, Yang et al. CVPR 2022; the
  map replaces ground-truth boxes; ``fgbg``); ``fgd_attention_weight`` adds FGD's attention loss
  (teacher spatial/channel attention as the student's target) and ``fgd_global_weight`` FGD's
  global relation term (a trained GcBlock per side, ``fgbg.GlobalRelation``; it does not read
  the map).
* ``attention_target_weight``: the teacher's map M_j/max(M_j) as a target for the first map a₁ of
  every fusing ABF (the weight of the level's own features, ``abf``): mean squared error.
* ``e2kd_weight``: e2KD's explanation alignment 1 − cos(E_S, E_T) added to the review
  (``xkd.distill.e2kd.explanation_cosine``, the same function e2kd trains with).

``saliency_shuffle`` deranges the maps before any of these use them, so it is the control of each.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from xkd.distill.base import MethodParams
from xkd.distill.e2kd import explanation_cosine
from xkd.distill.reviewkd.fgbg import attention_loss, foreground, split_hcl


class GuidanceParams(MethodParams):
    """Explanation-guidance fields of :class:`ReviewKDParams` (see the module docstring)."""

    saliency_invert: bool = Field(False, description="weights follow 1 - M/max(M): the background")
    saliency_adaptive: Literal["confidence", "concentration"] | None = Field(
        None, description="per-sample mix a·c_i: c_i = teacher max softmax or 1 - map entropy")
    fg_weight: float | None = Field(None, ge=0, description="FGD-style split: weight of the "
                                    "foreground HCL term (set with bg_weight; null = off)")
    bg_weight: float | None = Field(None, ge=0, description="weight of the background HCL term")
    fgd_temperature: float | None = Field(0.5, gt=0, description="τ of the teacher's spatial/channel "
                                          "attention in the split terms (FGD: 0.5); null = no attention")
    fgd_attention_weight: float = Field(0.0, ge=0, description="FGD attention loss: student "
                                        "spatial/channel attention to the teacher's (L1)")
    fgd_global_weight: float = Field(0.0, ge=0, description="FGD global relation term: MSE "
                                     "between GcBlock-transformed teacher and student features")
    attention_target_weight: float = Field(0.0, ge=0, description="teacher map as the target of "
                                           "each ABF's first attention map (MSE)")
    e2kd_weight: float = Field(0.0, ge=0, description="e2KD explanation alignment 1 - cos(E_S, E_T)")

    @property
    def split(self) -> bool:
        """The foreground/background split is on."""
        return self.fg_weight is not None or self.bg_weight is not None

    def uses_maps(self) -> bool:
        """Whether any guidance term reads the teacher's input-level map."""
        return self.split or self.attention_target_weight > 0


def split_review(outs: list[torch.Tensor], targets: list[torch.Tensor], maps: list[torch.Tensor],
                 p: GuidanceParams) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """fg_weight·L_fg + bg_weight·L_bg per spatial level (``maps`` one per level) and the split
    terms for the logs."""
    fg_w = 0.0 if p.fg_weight is None else p.fg_weight
    bg_w = 0.0 if p.bg_weight is None else p.bg_weight
    levels, fgs, bgs = [], [], []
    for u, t, m in zip(outs, targets, maps):
        fg = foreground(m, tuple(t.shape[-2:]))
        l_fg, l_bg = split_hcl(u, t, fg, p.fgd_temperature)
        levels.append(fg_w * l_fg + bg_w * l_bg)
        fgs.append(l_fg.detach())
        bgs.append(l_bg.detach())
    return levels, {"review_fg": torch.stack(fgs).mean(), "review_bg": torch.stack(bgs).mean()}


def attention_target(atts: list[torch.Tensor | None], maps: list[torch.Tensor]) -> torch.Tensor:
    """Mean over fusing levels of MSE(a₁, M_j / max M_j), M_j resized to a₁'s size."""
    terms = []
    for att, m in zip(atts, maps):
        if att is None:
            continue
        target = foreground(m, tuple(att.shape[-2:]))
        terms.append(F.mse_loss(att[:, 0:1].float(), target))
    if not terms:
        return torch.zeros((), device=maps[0].device)
    return torch.stack(terms).mean()


def fgd_attention(outs: list[torch.Tensor], targets: list[torch.Tensor], temperature: float
                  ) -> torch.Tensor:
    """FGD's attention loss summed over the spatial levels."""
    return torch.stack([attention_loss(u, t, temperature) for u, t in zip(outs, targets)]).sum()


def e2kd_term(teacher: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
              s_stage: torch.Tensor, s_logits: torch.Tensor, perm: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean 1 − cos(E_S, E_T), mean cos) with e2KD's own function; ``perm`` (the shuffle
    control) aligns sample i with the teacher's map of sample ``perm[i]``."""
    cos = explanation_cosine(teacher, x, target, s_stage, s_logits, perm)
    return (1.0 - cos).mean(), cos.detach().mean()
