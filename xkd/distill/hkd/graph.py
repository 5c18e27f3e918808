"""HKD's graph parts in plain torch (Zhou et al., "Distilling Holistic Knowledge with Graph Neural
Networks", ICCV 2021, arXiv 2108.05507; reference notes section 3.2). No DGL.

* :func:`knn_graph`: per-batch kNN graph on detached logits. p = softmax(z), distance
  d_ij = 1 − cos(p_i, p_j) with the diagonal set to −1, so each node's k nearest neighbours
  include itself. Returned as a dense adjacency A (B,B) with A[i, j] = 1 iff j ∈ kNN(i): edges run
  neighbour j → node i, so row i lists what node i aggregates.
* :class:`GraphConv`: one TAGConv layer with K = 1 hop: Linear([X, ÂX]) with
  Â = D^{-1/2} A D^{-1/2}, D = diag of in-degrees (row sums of A; k for every node of a kNN graph,
  so Â = A / k), followed by the caller's L2 normalisation.
* :class:`Embed`: e = N(W h + b), the linear embedding head on pooled features.
* :func:`info_nce`: cross-entropy of [⟨a, p⟩, ⟨a, n_1⟩ … ⟨a, n_K⟩] / τ with the positive at index
  0, averaged over the batch (τ = 0.07 in HKD).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def softmax_cosine_distance(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """d_ij = 1 − cos(softmax(z_i), softmax(z_j)), (B,B)."""
    p = F.softmax(logits.detach().float(), dim=1)
    w = p.norm(dim=1, keepdim=True)
    return 1.0 - (p @ p.t()) / (w @ w.t()).clamp_min(eps)


def knn_graph(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Dense adjacency (B,B) float: A[i, j] = 1 iff j is among node i's k nearest (self included)."""
    b = logits.shape[0]
    if not 1 <= k <= b:
        raise ValueError(f"k must be in 1..{b} (the batch size), got {k}")
    d = softmax_cosine_distance(logits)
    d = d.masked_fill(torch.eye(b, dtype=torch.bool, device=d.device), -1.0)
    nn_idx = d.topk(k, dim=1, largest=False).indices
    adj = torch.zeros(b, b, device=d.device)
    adj.scatter_(1, nn_idx, 1.0)
    return adj


def normalized_adjacency(adj: torch.Tensor) -> torch.Tensor:
    """Â = D^{-1/2} A D^{-1/2}, D = diag(in-degree) (row sums, at least 1)."""
    norm = adj.sum(dim=1).clamp_min(1.0).pow(-0.5)
    return norm[:, None] * adj * norm[None, :]


class GraphConv(nn.Module):
    """TAGConv with one hop: ``linear(cat([x, Â x], 1))`` (width ``dim_in`` → ``dim_out``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * dim_in, dim_out)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([x, normalized_adjacency(adj).to(x.dtype) @ x], dim=1))


class Embed(nn.Module):
    """e = N(W h + b) on a flattened feature vector."""

    def __init__(self, dim_in: int, dim_out: int = 128) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(h.flatten(1)), dim=1)


def info_nce(pos_scores: torch.Tensor, neg_scores: torch.Tensor, tau: float) -> torch.Tensor:
    """CE over [pos, negatives] / τ with target 0: ``pos_scores`` (B,), ``neg_scores`` (B,K)."""
    logits = torch.cat([pos_scores[:, None], neg_scores], dim=1).float() / tau
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
