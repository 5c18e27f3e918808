"""Teacher saliency -> per-level weight maps for the saliency-weighted HCL (DESIGN 3.5; notes 7.2-7.4).

For a level of size h×w: M_j = area-resize(M, h×w) (adaptive average pooling when shrinking,
bilinear when enlarging); Ŵ_j = M_j / mean_hw(M_j) per sample, uniform (1) where the map is all
zero (mean < eps), carries no location (:func:`degenerate`: constant, also after a zero-padded
crop) or the sample is gated; W_j = (1 − a) + a · Ŵ_j with a = ``saliency_mix``.

Diagnostics (training logs): ``sal_uniform_frac``, the fraction of samples whose weights end up
uniform at a level for any reason (all-zero or constant map, gated, a 1x1 level), averaged over
the levels; ``sal_degenerate_frac``, the fraction whose teacher map itself carries no location
(e.g. Grad-CAM of a 1x1 last stage): for those the weighted variant is plain ReviewKD.

Options: ``shuffle`` gives every sample another sample's map (a random derangement of the batch,
the "where vs. merely re-weighting" control); ``gate_wrong`` makes the weights uniform where the
teacher's top-1 is wrong; ``gate_diffuse`` makes them uniform where the normalised entropy of the
map, H(M/ΣM)/log(N), exceeds the threshold. Level-specific maps (``per_stage``) are the teacher's
Grad-CAM at each paired stage (Captum LayerGradCam, one teacher forward+backward per level).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xkd.distill.controls import derangement
from xkd.distill.gradcam import captum_gradcam
from xkd.errors import UserError

EPS = 1e-12
TARGET_RULES = ("label", "teacher_top1", "predicted")


def resolve_target(rule: str, labels: torch.Tensor, teacher_logits: torch.Tensor,
                   task: str = "classification") -> torch.Tensor:
    """Class explained for the teacher: the label or its top-1 ('predicted' = the teacher's own top-1).

    For regression the single output (index 0) is explained.
    """
    if task != "classification":
        return torch.zeros(teacher_logits.shape[0], dtype=torch.long, device=teacher_logits.device)
    if rule == "label":
        return labels.long()
    if rule in ("teacher_top1", "predicted"):
        return teacher_logits.argmax(dim=1)
    raise UserError(f"target rule '{rule}' is not supported; allowed: {', '.join(TARGET_RULES)}")


def resize_map(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downsample (adaptive average pooling) or bilinearly enlarge a (B,1,H,W) map to ``size``."""
    h, w = m.shape[-2:]
    if (h, w) == tuple(size):
        return m
    if size[0] <= h and size[1] <= w:
        return F.adaptive_avg_pool2d(m, size)
    return F.interpolate(m, size=size, mode="bilinear", align_corners=False)


def normalised_entropy(m: torch.Tensor) -> torch.Tensor:
    """H(p)/log(N) per sample for p = M/ΣM over the N pixels (1 for an all-zero map)."""
    flat = m.flatten(1).clamp_min(0)
    n = flat.shape[1]
    if n < 2:
        return torch.ones(flat.shape[0], device=m.device)
    total = flat.sum(dim=1, keepdim=True)
    p = flat / total.clamp_min(EPS)
    ent = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1) / math.log(n)
    return torch.where(total[:, 0] > EPS, ent, torch.ones_like(ent))


def degenerate(m: torch.Tensor, rel: float = 1e-6, support: float = 0.5) -> torch.Tensor:
    """(B,) bool: a non-negative map that carries no location: all zero, not finite, or one
    constant value (max - min of its positive values within ``rel`` of the max) over at least
    ``support`` of the pixels, the rest zero: Grad-CAM of a 1x1 stage upsampled, also after a
    zero-padded random crop. A constant block on a small part of the map still says where."""
    flat = m.detach().flatten(1).float()
    bad = ~torch.isfinite(flat).all(dim=1)
    flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    pos = flat > EPS
    hi = flat.amax(dim=1)
    lo = torch.where(pos, flat, torch.full_like(flat, float("inf"))).amin(dim=1)
    constant = ((hi - lo) <= rel * hi) & (pos.float().mean(dim=1) >= support)
    return bad | (hi <= EPS) | constant


def level_weights(m: torch.Tensor, size: tuple[int, int], mix: float | torch.Tensor,
                  uniform: torch.Tensor | None = None) -> torch.Tensor:
    """W_j (B,1,h,w) = (1 − mix) + mix · M_j / mean(M_j); rows in ``uniform`` (B,) bool get 1.
    ``mix`` is a float or a per-sample (B,1,1,1) tensor (``adaptive_mix``)."""
    mj = resize_map(m.float().clamp_min(0), size)
    mean = mj.mean(dim=(1, 2, 3), keepdim=True)
    flat = (mean < EPS) | ~torch.isfinite(mean)
    if uniform is not None:
        flat = flat | uniform.view(-1, 1, 1, 1)
    w_hat = torch.where(flat, torch.ones_like(mj), mj / mean.clamp_min(EPS))
    return (1.0 - mix) + mix * w_hat


class SaliencyWeighting:
    """Builds the weight pyramid of one batch for the weighted ReviewKD.

    ``source`` order: level-specific teacher Grad-CAM (``levels='per_stage'``), else
    ``batch['saliency']`` (cached, jointly augmented), else the online ``explainer`` set by
    :meth:`set_explainer`; none of them -> :class:`UserError`.
    """

    def __init__(self, mix: float, shuffle: bool, gate_wrong: bool, gate_diffuse: float | None,
                 levels: str, target_rule: str, task: str, invert: bool = False,
                 adaptive: str | None = None) -> None:
        self.mix, self.shuffle, self.gate_wrong = mix, shuffle, gate_wrong
        self.invert, self.adaptive = invert, adaptive
        self.gate_diffuse, self.levels, self.task = gate_diffuse, levels, task
        self.target_rule = target_rule
        self.explainer: Any = None

    def set_explainer(self, explainer: Any, target_rule: str) -> None:
        if target_rule not in TARGET_RULES:
            raise UserError(f"target rule '{target_rule}' is not supported; allowed: "
                            f"{', '.join(TARGET_RULES)}")
        self.explainer, self.target_rule = explainer, target_rule

    def _gate(self, maps: torch.Tensor, labels: torch.Tensor | None,
              teacher_logits: torch.Tensor) -> torch.Tensor:
        uniform = torch.zeros(maps.shape[0], dtype=torch.bool, device=maps.device)
        if self.gate_wrong and labels is not None:
            uniform |= teacher_logits.argmax(dim=1) != labels.to(maps.device).long()
        if self.gate_diffuse is not None:
            uniform |= normalised_entropy(maps) > self.gate_diffuse
        return uniform

    def input_map(self, batch: dict[str, torch.Tensor], teacher_logits: torch.Tensor) -> torch.Tensor:
        """The input-level map M (B,1,H,W): cached in the batch, or explained online."""
        if "saliency" in batch:
            return batch["saliency"].detach().float()
        if self.explainer is None:
            raise UserError("reviewkd with saliency_mix > 0 needs teacher saliency: the batch has "
                            "no 'saliency' and no explainer was set (set_teacher_explainer)")
        target = resolve_target(self.target_rule, batch["label"], teacher_logits, self.task)
        return self.explainer.explain(batch["image"], target).detach().float()

    def maps(self, batch: dict[str, torch.Tensor], teacher_logits: torch.Tensor, n_levels: int,
             teacher: nn.Module | None = None, layers: list[nn.Module] | None = None
             ) -> list[torch.Tensor]:
        """The teacher maps of one batch (one per level for ``per_stage``, else one input-level
        map), after the shuffle control (before ``invert``, see :meth:`oriented`)."""
        if self.levels == "per_stage":
            if teacher is None or layers is None or len(layers) != n_levels:
                raise ValueError("per_stage saliency needs the teacher and one layer per level")
            target = resolve_target(self.target_rule, batch["label"], teacher_logits, self.task)
            maps = [captum_gradcam(teacher, layer, batch["image"], target) for layer in layers]
        else:
            maps = [self.input_map(batch, teacher_logits)]
        if self.shuffle and maps[0].shape[0] > 1:
            perm = derangement(maps[0].shape[0], device=maps[0].device)
            maps = [m[perm] for m in maps]
        return maps

    def oriented(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The maps the terms follow: 1 − M/max(M) with ``invert`` (the background), else M."""
        return [invert_map(m) for m in maps] if self.invert else maps

    def weights(self, batch: dict[str, torch.Tensor], teacher_logits: torch.Tensor,
                sizes: list[tuple[int, int]], teacher: nn.Module | None = None,
                layers: list[nn.Module] | None = None, maps: list[torch.Tensor] | None = None
                ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """One weight map per spatial level (``sizes`` shallow -> deep) and cheap diagnostics.

        ``teacher`` and its paired stage ``layers`` are needed for ``levels='per_stage'``;
        ``maps`` (from :meth:`maps`) skips fetching them again.
        """
        labels = batch.get("label") if self.task == "classification" else None
        if maps is None:
            maps = self.maps(batch, teacher_logits, len(sizes), teacher, layers)
        mix: float | torch.Tensor = self.mix
        if self.adaptive is not None:
            mix = adaptive_mix(self.mix, self.adaptive, maps[-1], teacher_logits)
        degen = [degenerate(m) for m in maps]  # no location in the map itself: uniform weights
        gates = [self._gate(m, labels, teacher_logits) | d for m, d in zip(maps, degen)]
        maps = self.oriented(maps)  # degenerate/gates judge the teacher's own map
        if len(maps) == 1:
            maps, gates = maps * len(sizes), gates * len(sizes)
        out = [level_weights(m, size, mix, g) for m, g, size in zip(maps, gates, sizes)]
        uniform = torch.stack([degenerate(w).float().mean() for w in out])  # any reason, per level
        diag = {"sal_uniform_frac": uniform.mean(),
                "sal_degenerate_frac": torch.stack([d.float().mean() for d in degen]).mean(),
                "sal_peak": out[0].flatten(1).amax(dim=1).mean()}
        return out, diag


def invert_map(m: torch.Tensor) -> torch.Tensor:
    """1 − M / max_hw(M) per sample (issue 15's background weighting): weight where the teacher
    does not look; an all-zero map stays uninformative (constant 1, i.e. uniform weights)."""
    m = m.float().clamp_min(0)
    peak = m.flatten(1).amax(dim=1).view(-1, *([1] * (m.dim() - 1)))
    return 1.0 - m / peak.clamp_min(EPS)


def adaptive_mix(mix: float, rule: str, m: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample mix (B,1,1,1) a_i = mix · c_i: c_i = the teacher's max softmax probability
    (``confidence``) or the map's concentration 1 − H(M/ΣM)/log N (``concentration``)."""
    if rule == "confidence":
        c = torch.softmax(teacher_logits.detach().float(), dim=1).amax(dim=1)
    elif rule == "concentration":
        c = 1.0 - normalised_entropy(m.float())
    else:
        raise UserError(f"saliency_adaptive: '{rule}' is not supported; allowed: confidence, concentration")
    return (mix * c.clamp(0, 1)).to(m.device).view(-1, 1, 1, 1)
