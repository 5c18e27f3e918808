"""``hkd``: holistic knowledge distillation with a graph layer (Zhou, Wang, Chen, Chen, Wang, Wang,
Bu, "Distilling Holistic Knowledge with Graph Neural Networks", ICCV 2021, arXiv 2108.05507;
reference notes section 3.2, which follows the official code).

L = ce_weight·CE(z_s, y) + kd_weight·T²·KL(p_t^T ‖ p_s^T) + hkd_weight·L_HKD   (γ = 1, α = 1, β = 3)

L_HKD = four InfoNCE terms (τ = 0.07), each a batch mean:

* individual: e_s = N(W_s h_s + b_s) scores its positive M_t[i] against negatives M_s[n]; e_t
  symmetric (positive M_s[i], negatives M_t[n]). The negatives come from the anchor's *own*
  network's bank, as in the official code.
* holistic: g = N(GraphConv(e, A)) on the per-batch kNN graph A of each network's detached
  softmaxed logits (k neighbours, self included); g_s scores q_t[i] = N(0.75·M_t[i] + 0.25·g_t[i])
  (detached) against M_s[n]; g_t symmetric with q_s.

h is each model's pooled feature; the teacher backbone is frozen, both embedding heads and both
graph layers train. Memory banks (N = ``context.dataset_size`` rows, addressed by
``batch["index"]``) take the momentum update after the losses are computed; K negatives per
sample are drawn from training samples of other classes (labels per dataset index come from
``context.extras["labels"]``). A batch smaller than k is refused unless an earlier, larger batch
was seen (then it is the epoch's trailing batch and, as in the official code, the graph terms are
skipped for it; log ``hkd_graph`` is the fraction of samples whose batch had them).
Losses returned: ``ce``, ``kd`` (when kd_weight > 0), ``hkd``, each already weighted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.distill.hkd.graph import Embed, GraphConv, info_nce, knn_graph
from xkd.distill.hkd.memory import MemoryBank, negative_scores, sample_negatives
from xkd.distill.kd import require_classification
from xkd.losses import kd_loss
from xkd.errors import UserError
from xkd.models.base import FeatureModel, describe


class HKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="γ: weight of the CE term")
    kd_weight: float = Field(1.0, ge=0, description="α: 1 = 'HKD+KD' (README command), 0 = HKD alone")
    hkd_weight: float = Field(3.0, ge=0, description="β: weight of the four InfoNCE terms")
    T: float = Field(4.0, gt=0, description="temperature of the KD term")
    k: int = Field(8, ge=1, description="kNN graph neighbours, the node itself included")
    feat_dim: int = Field(128, ge=1, description="embedding width")
    nce_k: int = Field(16384, ge=1, description="negatives per sample (memory ~ B·min(N, K) scores)")
    nce_t: float = Field(0.07, gt=0, description="InfoNCE temperature τ")
    momentum: float = Field(0.9, ge=0, lt=1, description="memory-bank momentum")
    smooth: float = Field(0.75, ge=0, le=1, description="bank share of the holistic positive q")


@METHODS.register("hkd", params=HKDParams, needs_teacher=True, tasks=("classification",))
class HKDDistiller(Distiller):
    """HKD: embedding heads, kNN graph + one graph-conv layer, InfoNCE against memory banks."""

    uses_per_sample_state = True  # memory banks indexed by training position

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: HKDParams,
                 context: DistillContext) -> None:
        require_classification("hkd", context)
        super().__init__(student, teacher, params, context)
        where = str(context.extras.get("path", "")) or "hkd"
        n = int(context.dataset_size)
        if n < 2:
            raise UserError(f"{where}: hkd needs the training-set size (DistillContext.dataset_size) "
                            f"to size its memory banks, got {n}")
        labels = context.extras.get("labels")
        if labels is None or len(labels) != n:
            got = "none" if labels is None else f"{len(labels)} labels"
            raise UserError(f"{where}: hkd samples negatives from other classes and needs the label of "
                            f"every training sample (DistillContext.extras['labels'], {n} of them); got {got}")
        ex = context.example if context.example.dim() == 4 else context.example.unsqueeze(0)
        dev = next(student.parameters()).device
        _, s_dim = describe(student, ex.to(dev))
        _, t_dim = describe(teacher, ex.to(next(teacher.parameters()).device))
        d = params.feat_dim
        self.embed_s, self.embed_t = Embed(s_dim, d), Embed(t_dim, d)
        self.gnn_s, self.gnn_t = GraphConv(d, d), GraphConv(d, d)
        self.memory = MemoryBank(n, d, params.momentum)
        self.register_buffer("labels", torch.as_tensor(labels).long().clone(), persistent=False)
        self.where, self.max_batch = where, 0
        self.to(dev)

    def extra_modules(self) -> list[torch.nn.Module]:
        return [self.embed_s, self.embed_t, self.gnn_s, self.gnn_t, self.memory]

    def _index(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "index" not in batch:
            raise UserError(f"{self.where}: hkd addresses its memory banks by sample index, but the "
                            "batches carry no 'index'; use a dataset whose samples return 'index'")
        idx = batch["index"].long().view(-1)
        n = self.memory.student.shape[0]
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise UserError(f"{self.where}: batch index {int(idx.max())} is outside the memory banks "
                            f"(training-set size {n}); the indices must be positions in the training split")
        return idx

    def _check_batch(self, b: int) -> bool:
        """True when the graph terms run; refuses a batch size below k."""
        k = self.params.k
        self.max_batch = max(self.max_batch, b)
        if b >= k:
            return True
        if self.max_batch < k:
            raise UserError(f"{self.where}: batch of {b} samples is smaller than params.k = {k} "
                            f"(kNN neighbours); raise train.batch_size to at least {k} or lower params.k")
        return False

    def holistic_losses(self, e_s: torch.Tensor, e_t: torch.Tensor, z_s: torch.Tensor,
                        z_t: torch.Tensor, idx: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The two graph InfoNCE terms."""
        p, mem = self.params, self.memory
        g_s = F.normalize(self.gnn_s(e_s, knn_graph(z_s.detach(), p.k)), dim=1)
        g_t = F.normalize(self.gnn_t(e_t, knn_graph(z_t.detach(), p.k)), dim=1)
        with torch.no_grad():
            q_t = F.normalize(p.smooth * mem.teacher[idx] + (1 - p.smooth) * g_t, dim=1)
            q_s = F.normalize(p.smooth * mem.student[idx] + (1 - p.smooth) * g_s, dim=1)
        return (info_nce((g_s * q_t).sum(1), negative_scores(g_s, mem.student, neg), p.nce_t)
                + info_nce((g_t * q_s).sum(1), negative_scores(g_t, mem.teacher, neg), p.nce_t))

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        p, x, y = self.params, batch["image"], batch["label"].long()
        idx = self._index(batch)
        graph = self._check_batch(len(y))
        with torch.no_grad():
            t_feat = self.teacher.features(x)
        s_feat = self.student.features(x)
        z_s, z_t = s_feat.logits.float(), t_feat.logits.float()
        e_s = self.embed_s(s_feat.pooled.float())
        e_t = self.embed_t(t_feat.pooled.detach().float())
        mem = self.memory
        neg = sample_negatives(self.labels, y, p.nce_k)
        pos_s, pos_t = mem.teacher[idx].clone(), mem.student[idx].clone()
        l_hkd = (info_nce((e_s * pos_s).sum(1), negative_scores(e_s, mem.student, neg), p.nce_t)
                 + info_nce((e_t * pos_t).sum(1), negative_scores(e_t, mem.teacher, neg), p.nce_t))
        if graph:
            l_hkd = l_hkd + self.holistic_losses(e_s, e_t, z_s, z_t, idx, neg)
        mem.update(idx, e_s, e_t)  # after the losses: they used the banks before this step
        losses = {"ce": p.ce_weight * F.cross_entropy(z_s, y)}
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(z_s, z_t, p.T)
        losses["hkd"] = p.hkd_weight * l_hkd
        return StepOutput(logits=s_feat.logits, losses=losses, logs={"hkd_graph": float(graph)})
