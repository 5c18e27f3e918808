"""CCL losses and composition heads (Chen, Xian, Koepke, Shan, Akata, CVPR 2021, "Distilling
Audio-Visual Knowledge by Compositional Contrastive Learning"; reference/seed_methods.md 4.2-4.3).

- :class:`CompositionHead`: c_u = u + W_u [N(u); N(v)] + b_u and z_{c,u} = V_u c_u + d_u (4.2).
- :func:`label_contrastive`: the multi-class (label-aware) contrastive loss L_mc(P, Q) (4.3):
  s_bj = cos(p_b, q_j), pi_bj = softmax_j(s_bj / tau), positives are the same-class candidates
  (the anchor's own pair included), L = mean_b [ mean_{j in Pos_b} -log pi_bj
  + mean_{j in Neg_b} -log(1 - pi_bj) ].
- :func:`symmetric_contrastive`: S(P, Q) = L_mc(P, Q) + L_mc(Q, P).
- :func:`symmetric_kl`: the class-level term J = w * [KL(p_a || p_b) + KL(p_b || p_a)] with
  p = softmax(logits), per-sample sums over classes averaged over the batch, w = 0.5 (the
  reference calls it "JSD"; it is a weighted symmetric KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CompositionHead(nn.Module):
    """Compositional embedding of one teacher modality u with the video embedding v (CCL eq. in 4.2).

    ``forward(u, v) -> (c, z)``: the teacher embedding moved by a learned residual conditioned on
    the L2-normalised [teacher; video] pair, and its class logits. ``u`` is (B, D_u), ``v`` is
    (B, D_v); ``c`` is (B, D_u), ``z`` is (B, num_classes).
    """

    def __init__(self, teacher_dim: int, video_dim: int, num_classes: int) -> None:
        super().__init__()
        self.residual = nn.Linear(teacher_dim + video_dim, teacher_dim)
        self.classifier = nn.Linear(teacher_dim, num_classes)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        joint = torch.cat([F.normalize(u, dim=1), F.normalize(v, dim=1)], dim=1)
        c = u + self.residual(joint)
        return c, self.classifier(c)


def label_contrastive(p: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """L_mc(P, Q) of CCL (4.3): anchors ``p`` (B,D), candidates ``q`` (B,D), ``labels`` (B,).

    Cosine similarity of the L2-normalised rows, softmax over candidates at temperature ``tau``;
    positives of anchor b are all j with y_j = y_b (j = b included), negatives the rest. An anchor
    without negatives contributes only its positive term. An empty batch gives 0.
    """
    if p.shape[0] == 0:
        return p.sum() * 0.0 + q.sum() * 0.0
    pn, qn = F.normalize(p.float(), dim=1), F.normalize(q.float(), dim=1)
    sim = pn @ qn.t()  # = 1 - |p - q|^2 / 2 for unit vectors
    log_pi = F.log_softmax(sim / tau, dim=1)
    pos = (labels.view(-1, 1) == labels.view(1, -1)).float()
    neg = 1.0 - pos
    pos_term = -(log_pi * pos).sum(1) / pos.sum(1)
    log_one_minus = torch.log((-torch.expm1(log_pi)).clamp_min(1e-12))  # log(1 - pi), stable
    neg_term = -(log_one_minus * neg).sum(1) / neg.sum(1).clamp_min(1.0)
    return (pos_term + neg_term).mean()


def symmetric_contrastive(p: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """S(P, Q) = L_mc(P, Q) + L_mc(Q, P) (CCL 4.3, used for every pair in both directions)."""
    return label_contrastive(p, q, labels, tau) + label_contrastive(q, p, labels, tau)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, weight: float = 0.5) -> torch.Tensor:
    """J(z_a, z_b) = weight * [KL(p_a || p_b) + KL(p_b || p_a)], p = softmax at T = 1 (CCL 4.3);
    KL summed over classes, averaged over samples. An empty batch gives 0."""
    if logits_a.shape[0] == 0:
        return logits_a.sum() * 0.0 + logits_b.sum() * 0.0
    la, lb = F.log_softmax(logits_a.float(), dim=1), F.log_softmax(logits_b.float(), dim=1)
    kl_ab = (la.exp() * (la - lb)).sum(1)
    kl_ba = (lb.exp() * (lb - la)).sum(1)
    return weight * (kl_ab + kl_ba).mean()
