"""One training epoch: seeded batches, AMP forward/backward, NaN checks, rank-reduced means.

The distiller's named losses are summed into one objective (DESIGN section 3.4); every step checks
that all of them are finite on every rank before the backward pass, so a divergence stops all ranks
at the same step and never reaches the optimiser.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from xkd.config import TrainConfig
from xkd.engine import distributed as D
from xkd.engine.env import derive_seed
from xkd.engine.precision import Precision, batch_channels_last
from xkd.errors import UserError


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, dataset: Dataset | None = None) -> list[list[int]]:
    """This rank's batches of sample indices for ``epoch``: a permutation seeded by ``(seed, epoch)``
    (a :class:`DistributedSampler` with ``set_epoch`` under DDP). A trailing batch of a single
    sample is dropped (BatchNorm cannot train on it)."""
    if D.is_distributed():
        sampler = DistributedSampler(dataset if dataset is not None else range(n), shuffle=True,
                                     seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        order = list(sampler)
    else:
        g = torch.Generator().manual_seed(derive_seed(seed, epoch))
        order = torch.randperm(n, generator=g).tolist()
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches.pop()
    return batches


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train_epoch(model: nn.Module, distiller: nn.Module, loader: DataLoader, n_steps: int, epoch0: int,
                 opt: torch.optim.Optimizer, sched: Any, scaler: torch.amp.GradScaler, cfg: TrainConfig,
                 device: torch.device, precision: Precision, task: str, bar_desc: str,
                 on_bad: Callable[[int, str], Exception],
                 extra: Sequence[Any] = (),
                 augment: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """One pass; returns sums over samples of each loss/log, the correct count (or abs error) and n.

    ``epoch0`` is the 0-indexed epoch handed to ``distiller(batch, epoch0)``. ``extra`` holds the
    separately declared optimisers (:class:`xkd.engine.optim.ExtraOptimizer`): one backward of the
    summed losses, then ``opt`` and each extra optimiser step in order (gradient clipping, when
    set, is applied per optimiser) and every scheduler advances. ``augment(batch)``, when given,
    augments each batch on ``device`` (e.g. :meth:`xkd.data.JointAugment.augment_batch`).
    """
    model.train()
    names: list[str] = []
    sums: torch.Tensor | None = None
    log_sums: dict[str, Any] = {}  # python floats, or float64 tensors on ``device`` for tensor logs
    n, hits = 0, torch.zeros((), dtype=torch.float64, device=device)  # on device: no sync per step
    opts = [opt] + [e.optimizer for e in extra]
    scheds = [sched] + [e.scheduler for e in extra]
    first: float | None = None
    params = [[p for g in o.param_groups for p in g["params"]] for o in opts]
    show = D.is_main_process() and sys.stderr.isatty() and not os.environ.get("XKD_NO_PROGRESS")
    # one iterator: tqdm.auto's async class calls iter() on its iterable and again when iterated,
    # which with workers started (and prefetched into) a second, discarded loader iterator
    batches = iter(loader)
    for i, batch in enumerate(tqdm(batches, total=n_steps, desc=bar_desc, disable=not show, leave=False)):
        if i >= n_steps:
            break
        batch = to_device(batch, device)
        if augment is not None:
            batch = augment(batch)
        if precision.channels_last:
            batch = batch_channels_last(batch)
        with precision.context():
            try:
                out = model(batch, epoch0)
            except RuntimeError as e:
                if "find_unused_parameters" not in str(e):
                    raise
                raise UserError(f"{type(distiller).__name__} leaves some trainable parameters unused in "
                                "a step, which DDP cannot reduce; set the class attribute "
                                "ddp_find_unused_parameters = True") from e
        if not out.losses:
            raise UserError(f"{type(distiller).__name__} returned no losses")
        if not names:
            names = list(out.losses)
            sums = torch.zeros(len(names) + 1, dtype=torch.float64)
        vals = torch.stack([out.losses[k].detach().float().reshape(()) for k in names]).cpu()
        finite = bool(torch.isfinite(vals).all())
        if not D.all_ranks_true(finite, device):
            bad = [k for k, v in zip(names, vals.tolist()) if not math.isfinite(v)]
            what = (f"loss '{bad[0]}' is {vals[names.index(bad[0])].item()}" if bad
                    else "a loss is not finite on another rank")
            raise on_bad(i + 1, what)
        total = sum(out.losses[k].float() for k in names)
        for o in opts:
            o.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if first is None:
            first = float(vals.sum())
        for o, ps in zip(opts, params):
            if o is not opt and all(p.grad is None for p in ps):
                continue  # an extra optimiser whose parameters no loss reached this step
            if cfg.grad_clip is not None:
                scaler.unscale_(o)
                torch.nn.utils.clip_grad_norm_(ps, cfg.grad_clip)
            scaler.step(o)
        scaler.update()
        for s in scheds:
            s.step()
        bs = int(batch["label"].shape[0])
        n += bs
        assert sums is not None
        sums[:-1] += vals.double() * bs
        sums[-1] += float(vals.sum()) * bs
        logits = out.logits.detach().float()
        if task == "classification":
            hits += (logits.argmax(1) == batch["label"]).sum()
        else:
            hits += (logits.reshape(bs, -1)[:, 0] - batch["label"].float()).abs().sum().double()
        for k, v in out.logs.items():
            v = v.detach().double() if torch.is_tensor(v) else float(v)
            log_sums[k] = log_sums.get(k, 0.0) + v * bs
    logs = {k: float(v) for k, v in log_sums.items()}  # the epoch's one transfer of hits and logs
    return {"names": names, "sums": sums, "log_sums": logs, "n": n, "hits": float(hits), "first_loss": first}


def reduce_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """Epoch means over all ranks' samples."""
    names, logs = stats["names"], sorted(stats["log_sums"])
    vec = torch.zeros(len(names) + 1 + len(logs) + 2, dtype=torch.float64)
    if stats["sums"] is not None:
        vec[: len(names) + 1] = stats["sums"]
    for j, k in enumerate(logs):
        vec[len(names) + 1 + j] = stats["log_sums"][k]
    vec[-2], vec[-1] = stats["hits"], stats["n"]
    if D.is_distributed():  # gloo reduces CPU tensors; nccl needs the GPU
        dev = torch.device("cuda", torch.cuda.current_device()) if D.current().backend == "nccl" else "cpu"
        vec = D.all_reduce_sum(vec.to(dev)).cpu()
    n = max(float(vec[-1]), 1.0)
    return {"losses": {k: float(vec[j]) / n for j, k in enumerate(names)},
            "loss": float(vec[len(names)]) / n,
            "logs": {k: float(vec[len(names) + 1 + j]) / n for j, k in enumerate(logs)},
            "hits": float(vec[-2]) / n, "n": int(vec[-1])}
