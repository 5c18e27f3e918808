"""Predictions and evaluation metrics (DESIGN sections 3 and 7).

:func:`predict` runs a model over a dataset of sample dicts; :func:`evaluate_predictions` gives
accuracy and cross-entropy (classification) or MAE, RMSE and MSE (regression); :func:`agreement` gives
teacher-student top-1 agreement and the mean KL(p_T || p_S) of the softmax outputs (Hinton et al.
2015; Stanton et al. 2021, "Does Knowledge Distillation Really Work?", section 3, use both).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from xkd.engine.distributed import is_distributed
from xkd.engine.ranks import all_gather_rows


def _loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin: bool = False) -> DataLoader:
    """In-order batches; ``pin``: page-locked host memory, so the copies to a GPU overlap."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin)


@torch.no_grad()
def collect(model: nn.Module, dataset: Dataset, device: torch.device | str,
            output: Callable[[nn.Module, torch.Tensor], torch.Tensor], batch_size: int = 256,
            num_workers: int = 0, input_key: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """``(output(model, batch[input_key]) stacked (N,...) float32 on CPU, labels (N,))`` over the
    dataset in order, in eval mode with no grad; the model's mode is restored afterwards.
    ``dataset`` may be a DataLoader that yields it in order (e.g. one with persistent workers)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    outs, labels = [], []
    try:
        batches = dataset if isinstance(dataset, DataLoader) else _loader(
            dataset, batch_size, num_workers, device.type == "cuda")
        for batch in batches:
            outs.append(output(model, batch[input_key].to(device, non_blocking=True)).detach().float().cpu())
            labels.append(batch["label"].cpu())
    finally:
        model.train(was_training)
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return logits.unsqueeze(1) if logits.dim() == 1 else logits


def predict(model: nn.Module, dataset: Dataset, device: torch.device | str, batch_size: int = 256,
            num_workers: int = 0, input_key: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N,K) float32 on CPU, labels (N,))`` in eval mode, no grad; the mode is restored.

    ``model(batch[input_key])`` must return logits (a :class:`~xkd.models.base.FeatureModel` does). Regression
    outputs of shape (N,) are returned as (N,1).
    """
    return collect(model, dataset, device, _logits, batch_size, num_workers, input_key)


def predict_sharded(model: nn.Module, dataset: Dataset, device: torch.device | str,
                    batch_size: int = 256, num_workers: int = 0, input_key: str = "image"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict` with the samples split over the DDP ranks (rank r takes samples r, r + W,
    r + 2W, ...): every rank gets every sample's logits and labels in dataset order, as
    :func:`predict` gives them (each sample's forward is the same; only batch composition
    differs). Without a process group, or with fewer samples than ranks, it is :func:`predict`."""
    n = len(dataset)  # type: ignore[arg-type]
    if not is_distributed() or n < dist.get_world_size():
        return predict(model, dataset, device, batch_size, num_workers, input_key)
    rank, world = dist.get_rank(), dist.get_world_size()
    logits, labels = predict(model, Subset(dataset, range(rank, n, world)), device, batch_size,
                             num_workers, input_key)
    wire = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
    parts, label_parts = all_gather_rows(logits.to(wire), labels.to(wire))
    out = torch.empty((n,) + tuple(logits.shape[1:]), dtype=logits.dtype)
    all_labels = torch.empty((n,) + tuple(labels.shape[1:]), dtype=labels.dtype)
    for r in range(world):
        out[r::world], all_labels[r::world] = parts[r].cpu(), label_parts[r].cpu()
    return out, all_labels


def evaluate_predictions(logits: torch.Tensor, labels: torch.Tensor,
                         task: str = "classification") -> dict[str, float]:
    """Classification: ``acc`` (fraction in [0, 1]) and ``loss`` (mean cross-entropy);
    regression: ``mae``, ``rmse`` and ``loss`` (mean squared error) of the first output, in the
    units of ``logits`` and ``labels`` (the pipeline maps both to original units first). Both give ``n``."""
    n = int(labels.shape[0])
    if n == 0:
        return {"n": 0}
    logits = logits.float()
    if task == "classification":
        labels = labels.long()
        acc = (logits.argmax(1) == labels).float().mean().item()
        loss = F.cross_entropy(logits, labels).item()
        return {"acc": acc, "loss": loss, "n": n}
    if task == "regression":
        pred = logits.reshape(n, -1)[:, 0]
        target = labels.float().reshape(n)
        mse = F.mse_loss(pred, target).item()
        return {"mae": (pred - target).abs().mean().item(), "rmse": mse ** 0.5, "loss": mse, "n": n}
    raise ValueError(f"unknown task '{task}'; allowed: classification, regression")


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> dict[str, float]:
    """Top-1 agreement (fraction) and mean over samples of KL(p_T || p_S) at temperature 1."""
    s = student_logits.float()
    t = teacher_logits.float()
    if s.shape != t.shape:
        raise ValueError(f"student logits {tuple(s.shape)} and teacher logits {tuple(t.shape)} differ")
    if s.shape[0] == 0:
        return {"agreement": float("nan"), "kl": float("nan"), "n": 0}
    agree = (s.argmax(1) == t.argmax(1)).float().mean().item()
    log_s = F.log_softmax(s, dim=1)
    log_t = F.log_softmax(t, dim=1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean").item()
    return {"agreement": agree, "kl": kl, "n": int(s.shape[0])}
