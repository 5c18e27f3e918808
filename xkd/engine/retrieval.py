"""Retrieval with learned embeddings: recall at k (CCL, Chen et al. CVPR 2021, section 4: video
retrieval R@k with the video embeddings; test queries against the train gallery).

R@k = fraction of queries whose k nearest gallery items (cosine similarity of the pooled
embeddings, ties broken by gallery order) contain at least one item of the query's label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from xkd.engine.evaluate import collect


def embed(model: nn.Module, dataset: Dataset, device: torch.device | str, batch_size: int = 128,
          input_key: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled embeddings (N,D) float32 on CPU, labels (N,))`` of ``model.features`` in eval mode
    (the mode is restored), reading the batch key ``input_key``."""
    return collect(model, dataset, device, lambda m, x: m.features(x).pooled, batch_size,
                   input_key=input_key)


def recall_at_k(query: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                gallery_labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """``{"r1": ..., "r5": ...}``: fraction of queries with a same-label item among their k most
    cosine-similar gallery items (query and gallery are different sets, no self-match to drop)."""
    if query.shape[0] == 0 or gallery.shape[0] == 0:
        return {f"r{k}": float("nan") for k in ks}
    sim = F.normalize(query.float(), dim=1) @ F.normalize(gallery.float(), dim=1).t()
    kmax = min(max(ks), gallery.shape[0])
    # stable order: sort descending, ties keep gallery order
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :kmax]
    hit = gallery_labels[order] == query_labels.view(-1, 1)
    return {f"r{k}": float(hit[:, :min(k, kmax)].any(1).float().mean()) for k in ks}
