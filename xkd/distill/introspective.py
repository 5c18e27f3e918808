"""``introspective``: learning from online self-explanation (Gu, Wu, Tresp, "Introspective Learning
by Distilling Knowledge from Online Self-explanation", ACCV 2020, arXiv 2009.09140).

Teacher-free. **The details are a reconstruction** (reference notes 6.2, marked "recalled —
verify"; no official code exists): the paper's exact explanation method, similarity, soft-target
form, T and α are unverified, so every choice below is a parameter.

Per batch, the student explains its own prediction with ``xkd.explain`` (``explainer``; default
Captum Grad-CAM on its last stage) for the label y and for other classes c (``top_k``: the k most
probable other classes under its current logits, or every class when unset), giving maps E_c.
Class similarities s_c = sim(E_y, E_c) (``similarity``: cosine of the flattened maps, or minus
their root-mean-square difference) become the soft target

    q = softmax(s / target_temperature) over the explained classes (unexplained classes get 0),

which is detached (Captum's maps carry no graph, so no second-order gradients). The loss is

    L = ce_weight · CE(z, y) + alpha · T² · KL(q ‖ softmax(z / T))        -> ``ce``, ``introspect``

Explanations run in eval mode (BatchNorm running statistics) and leave the student's modes,
gradients and hooks as they were. ``refresh_every`` > 1 keeps each sample's q (by
``batch["index"]``) for that many epochs before explaining it again. Logs: ``q_label`` (mean mass
q puts on the label) and ``q_entropy``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.distill.kd import require_classification
from xkd.engine.ranks import all_gather_rows
from xkd.errors import UserError
from xkd.models.base import FeatureModel


class SelfExplainer(MethodParams):
    """Which ``xkd.explain`` method explains the student (``params`` as in the ``explain`` section)."""

    method: str = "gradcam"
    params: dict[str, Any] = Field(default_factory=dict)
    max_batch: int = Field(64, ge=1)


class IntrospectiveParams(MethodParams):
    explainer: SelfExplainer = Field(default_factory=SelfExplainer,
                                     description="self-explanation method (default Grad-CAM, last stage)")
    similarity: Literal["cosine", "neg_rmse"] = Field("cosine", description="sim(E_y, E_c)")
    top_k: int | None = Field(None, ge=1, description="explain the label plus the k most probable "
                              "other classes; null = every class")
    target_temperature: float = Field(0.1, gt=0, description="softmax temperature over similarities")
    T: float = Field(1.0, gt=0, description="temperature of the student's softened logits (loss × T²)")
    alpha: float = Field(1.0, ge=0, description="weight of the KL term")
    ce_weight: float = Field(1.0, ge=0, description="weight of the CE term")
    refresh_every: int = Field(1, ge=1, description="epochs a sample's soft target is reused")


def explained_classes(logits: torch.Tensor, labels: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """(B,S) class indices: column 0 the label, then the k most probable other classes (all
    other classes when ``top_k`` is None or ≥ C − 1), most probable first."""
    c = logits.shape[1]
    k = c - 1 if top_k is None else min(top_k, c - 1)
    scores = logits.detach().float().clone()
    scores.scatter_(1, labels.view(-1, 1).long(), float("-inf"))
    others = scores.topk(k, dim=1).indices if k > 0 else labels.new_zeros(len(labels), 0)
    return torch.cat([labels.view(-1, 1).long(), others.long()], dim=1)


def class_similarities(maps: torch.Tensor, similarity: str) -> torch.Tensor:
    """(B,S) sim(E_0, E_j) for maps (B,S,...) whose column 0 explains the label."""
    flat = maps.detach().float().flatten(2)
    anchor = flat[:, :1]
    if similarity == "cosine":
        return F.cosine_similarity(anchor, flat, dim=2, eps=1e-8)
    if similarity == "neg_rmse":
        return -(anchor - flat).pow(2).mean(dim=2).sqrt()
    raise UserError(f"introspective: similarity '{similarity}' is not supported; allowed: cosine, neg_rmse")


def soft_targets(sims: torch.Tensor, classes: torch.Tensor, num_classes: int,
                 temperature: float) -> torch.Tensor:
    """q (B,C): softmax(sims / temperature) placed at ``classes``; zero elsewhere; detached."""
    q = torch.zeros(sims.shape[0], num_classes, device=sims.device)
    return q.scatter(1, classes, F.softmax(sims.detach().float() / temperature, dim=1))


class TargetCache(nn.Module):
    """Soft targets per training index and the epoch each was made (for ``refresh_every`` > 1)."""

    def __init__(self, size: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("q", torch.zeros(size, num_classes))
        self.register_buffer("made", torch.full((size,), -(1 << 30), dtype=torch.long))

    @torch.no_grad()
    def store(self, index: torch.Tensor, q: torch.Tensor, epoch: int) -> None:
        """Keep ``q`` for ``index``, made at ``epoch``. Called on every step by every rank: under DDP
        the rows of all ranks are gathered and stored on each, so every rank holds the union."""
        for idx, rows in zip(*all_gather_rows(index, q.to(self.q.dtype))):
            self.q[idx] = rows
            self.made[idx] = epoch


@METHODS.register("introspective", params=IntrospectiveParams, needs_teacher=False,
                  tasks=("classification",))
class IntrospectiveDistiller(Distiller):
    """CE plus KL to soft targets built from the student's own explanations (teacher-free)."""

    needs_teacher = False

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None,
                 params: IntrospectiveParams, context: DistillContext) -> None:
        require_classification("introspective", context)
        super().__init__(student, None, params, context)  # teacher-free: any teacher is ignored
        from xkd.explain import build

        self.where = str(context.extras.get("path", "")) or "introspective"
        e = params.explainer
        # Built now, so a layer the student lacks (Grad-CAM) is one line before training starts.
        self.explainer = build(e.method, student, max_batch=e.max_batch,
                               path=f"{self.where}.params.explainer", **e.params)
        self.num_classes = context.num_classes
        self.cache: TargetCache | None = None
        if params.refresh_every > 1:
            if context.dataset_size < 1:
                raise UserError(f"{self.where}.params.refresh_every: > 1 keeps soft targets per "
                                "training sample and needs the training-set size; use 1")
            self.cache = TargetCache(context.dataset_size, context.num_classes)
            self.uses_per_sample_state = True

    def extra_modules(self) -> list[nn.Module]:
        return [self.cache] if self.cache is not None else []

    def explain_targets(self, x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Soft targets q (B,C) from fresh self-explanations of ``x``."""
        p = self.params
        classes = explained_classes(logits, labels, p.top_k)
        maps = torch.stack([self.explainer.explain(x, classes[:, j]) for j in range(classes.shape[1])], 1)
        return soft_targets(class_similarities(maps, p.similarity), classes, self.num_classes,
                            p.target_temperature)

    def _targets(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, epoch: int) -> torch.Tensor:
        x, y = batch["image"], batch["label"].long()
        if self.cache is None:
            return self.explain_targets(x, logits, y)
        if "index" not in batch:
            raise UserError(f"{self.where}.params.refresh_every: > 1 needs batch['index'] (sample "
                            "positions), which this dataset does not return; use refresh_every 1")
        idx = batch["index"].long().view(-1)
        if int(idx.max()) >= self.cache.q.shape[0] or int(idx.min()) < 0:
            raise UserError(f"{self.where}: batch index {int(idx.max())} is outside the training split "
                            f"({self.cache.q.shape[0]} samples)")
        stale = (epoch - self.cache.made[idx]) >= self.params.refresh_every
        s = stale.nonzero().view(-1)
        fresh = (self.explain_targets(x[s], logits[s], y[s]) if len(s)
                 else self.cache.q.new_zeros(0, self.num_classes))
        self.cache.store(idx[s], fresh, epoch)  # every step: a collective under DDP
        return self.cache.q[idx].clone()

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        p, y = self.params, batch["label"].long()
        logits = self.student(batch["image"])
        q = self._targets(batch, logits, epoch)
        log_p = F.log_softmax(logits.float() / p.T, dim=1)
        kl = F.kl_div(log_p, q, reduction="batchmean") * (p.T * p.T)
        losses = {"ce": p.ce_weight * F.cross_entropy(logits.float(), y), "introspect": p.alpha * kl}
        ent = -(q * q.clamp_min(1e-12).log()).sum(1).mean()
        logs = {"q_label": float(q.gather(1, y.view(-1, 1)).mean()), "q_entropy": float(ent)}
        return StepOutput(logits=logits, losses=losses, logs=logs)
