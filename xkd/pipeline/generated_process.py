"""From a trained cGAN to a processed fake set (cGAN-KD M1 + M2; seed_methods.md 5.3-5.5).

1. Proposals at balanced labels: every class (classification) or ``REG_LABELS`` equally spaced
   labels over the label range (regression), ``n_prop`` in all.
2. M1 (``subsample``): class-/label-wise cDR-RS, accepting with probability r(phi(x), y) / M.
3. M2 (``filter.enabled``): per-class teacher CE quantile (classification) or absolute-error
   quantile over all fakes with optional relabelling (regression; teacher predictions are mapped
   to original units and clipped to the label range, as in the reference).
4. A balanced subset of ``fake_size``: the first survivors of each class / label.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Callable

import torch

from xkd.gan.config import SubsampleConfig
from xkd.gan.filtering import filter_classification, filter_regression
from xkd.gan.subsample import generator_proposer, rejection_sample_per_label
from xkd.data.base import DataBundle
from xkd.data.label_scaling import to_original
from xkd.models.base import FeatureModel

if TYPE_CHECKING:
    from xkd.pipeline.context import RunContext

REG_LABELS = 20
"""Distinct conditioning labels of a regression fake set (equally spaced over the label range)."""
PROPOSAL_BUDGET = 20
"""cDR-RS draws at most this many proposals per wanted sample of a label (after burn-in); a label
whose ratio model accepts less keeps what it accepted (``fake_used`` records the final size)."""


def budgeted_rejection(propose_labels: Callable[[torch.Tensor], torch.Tensor], ratio: Callable,
                       levels: torch.Tensor, quota: int, seed: int, burn_in: int, batch_size: int,
                       budget: int = PROPOSAL_BUDGET) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Per-label cDR-RS (cGAN-KD M1, seed_methods.md 5.3) with a proposal budget: for label j, a
    burn-in sets M, then each proposal is accepted with probability r / M, M the running maximum;
    stops at ``quota`` accepted or ``budget * quota`` proposals. The draws of
    :func:`xkd.gan.subsample.rejection_sample_per_label` (which this calls with ``budget``);
    ``accepted`` counts what is kept (at most ``quota`` per label)."""
    items, labels, st = rejection_sample_per_label(propose_labels, ratio, levels, quota, seed,
                                                   burn_in, batch_size, budget=budget)
    proposed = int(st["proposed"])
    accepted = sum(min(int(p["accepted"]), quota) for p in st["per_label"])
    return items, labels, {"proposed": proposed, "accepted": accepted,
                           "acceptance_rate": accepted / max(proposed, 1)}


def target_labels(bundle: DataBundle) -> torch.Tensor:
    """The conditioning labels of a fake set: every class id, or ``REG_LABELS`` equally spaced
    labels over the label range (original units)."""
    if bundle.task == "classification":
        return torch.arange(bundle.num_classes)
    return torch.linspace(bundle.label_offset, bundle.label_offset + bundle.label_scale, REG_LABELS)


def ratio_labels(labels: torch.Tensor, bundle: DataBundle) -> torch.Tensor:
    """Labels as the ratio model takes them: class ids, or float labels (it min-max normalises them)."""
    return labels.long() if bundle.task == "classification" else labels.float()


@torch.no_grad()
def features(ctx: "RunContext", teacher: FeatureModel, images: torch.Tensor, bs: int = 256) -> torch.Tensor:
    """phi(x) of cDR-RS: the teacher's pooled features, or flattened pixels (``cgan.features``)."""
    if ctx.cfg.cgan.features == "pixels":
        return images.flatten(1).float()
    return torch.cat([teacher.features(images[i:i + bs].to(ctx.device)).pooled.flatten(1).float().cpu()
                      for i in range(0, len(images), bs)])


@torch.no_grad()
def _teacher_out(ctx: "RunContext", teacher: FeatureModel, images: torch.Tensor, bs: int = 256) -> torch.Tensor:
    return torch.cat([teacher(images[i:i + bs].to(ctx.device)).float().cpu()
                      for i in range(0, len(images), bs)]) if len(images) else torch.zeros(0, 1)


def _balanced(labels: torch.Tensor, keep: torch.Tensor, levels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (sorted) of the first kept samples of each level (level = conditioning label):
    ``n // L`` per level and one more for the first ``n % L`` levels, topped up from the remaining
    kept samples when a level runs short; ``n`` at most."""
    base, extra = divmod(n, len(levels))
    chosen: list[torch.Tensor] = []
    for j, lv in enumerate(levels):
        rows = ((labels == lv) & keep).nonzero(as_tuple=True)[0]
        chosen.append(rows[: base + (j < extra)])
    idx = torch.cat(chosen)
    if len(idx) < n:
        rest = keep.clone()
        rest[idx] = False
        idx = torch.cat([idx, rest.nonzero(as_tuple=True)[0][: n - len(idx)]])
    return idx.sort().values[:n]


def process_fakes(ctx: "RunContext", stage: Any, ratio: Any, rc: SubsampleConfig,
                  teacher: FeatureModel, bundle: DataBundle, p: Any, n_prop: int
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Images (normalised), labels (original units) and stats/seconds of one processed fake set
    from ``stage.generator``; ``ratio`` (None = no subsampling) with the burn-in and proposal batch
    of ``rc``; ``p`` the student's ``cgan_kd`` params, ``n_prop`` the proposals wanted."""
    levels = target_labels(bundle)
    per = math.ceil(n_prop / len(levels))
    t0 = time.perf_counter()
    propose = generator_proposer(stage.generator, ctx.seed + 17, ctx.device)
    info: dict[str, Any] = {"fake_proposed": per * len(levels)}  # generated (burn-in included)
    if ratio is not None:
        def r_images(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return ratio(features(ctx, teacher, images), ratio_labels(labels, bundle))

        images, labels, st = budgeted_rejection(propose, r_images, levels, per, ctx.seed + 23,
                                                burn_in=rc.burn_in, batch_size=rc.proposal_batch)
        info["acceptance_rate"] = float(st["acceptance_rate"])
        info["fake_proposed"] = int(st["proposed"]) + rc.burn_in * len(levels)  # generated in all
    else:
        labels = levels.repeat_interleave(per)
        images = propose(labels)
    info["fake_after_subsample"] = len(labels)
    info["sampling_seconds"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    keep = torch.ones(len(labels), dtype=torch.bool)
    new_labels = labels.clone()
    if p.filter.enabled:
        out = _teacher_out(ctx, teacher, images)
        if bundle.task == "classification":
            keep = filter_classification(out, labels.long(), p.filter.quantile)
        else:
            pred = to_original(out[:, 0], bundle)
            lo, hi = bundle.label_offset, bundle.label_offset + bundle.label_scale
            keep, new_labels = filter_regression(pred, labels.float(), p.filter.quantile,
                                                 p.filter.relabel, clip=(lo, hi))
    info["fake_after_filter"] = int(keep.sum())
    idx = _balanced(labels, keep, levels, p.fake_size)
    info["filtering_seconds"] = round(time.perf_counter() - t0, 2)
    out_labels = new_labels[idx]
    out_labels = out_labels.long() if bundle.task == "classification" else out_labels.float()
    return images[idx], out_labels, info
