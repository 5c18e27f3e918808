"""Checkpoint contents for exact resume (DESIGN sections 5 and 6).

``last.pt`` (written atomically every epoch) holds everything needed to continue exactly: the
trainable modules' state, optimiser, scheduler (and, under ``extra_optimizers``, those a distiller
declares separately), AMP scaler, RNG states of python/numpy/torch/CUDA, the epoch, best
metric/epoch, seed and ``format_version``. ``best.pt`` holds the student and extra modules of the
best epoch (``model``: the ``trainable_modules()`` state; also split as ``student`` and
``extra``) and its metric. Everything is stored as tensors and plain Python types,
so both load with ``torch.load(weights_only=True)`` (:func:`xkd.io.torch_load`).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xkd import FORMAT_VERSION
from xkd.errors import UserError
from xkd.io import torch_load, torch_save

LAST = "last.pt"
BEST = "best.pt"
HISTORY = "history.jsonl"


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch and CUDA RNG states as tensors and plain types."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only where the devices exist)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def trainable_state(distiller: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of ``distiller.trainable_modules()`` (keys ``student.*`` and ``extra.*``)."""
    return {k: v.detach().cpu().clone() for k, v in distiller.trainable_modules().state_dict().items()}


def save_best(path: Path, distiller: nn.Module, metric_name: str, metric: float | None,
              epoch: int) -> None:
    """``model``: the full ``trainable_modules()`` state (``student.*``, ``extra.*``);
    ``student``/``extra``: the same tensors split per part (stored once)."""
    full = {k: v.detach().cpu() for k, v in distiller.trainable_modules().state_dict().items()}
    part = {p: {k[len(p) + 1:]: v for k, v in full.items() if k.startswith(p + ".")}
            for p in ("student", "extra")}
    torch_save(path, {
        "format_version": FORMAT_VERSION,
        "kind": "best",
        "model": full,
        "student": part["student"],
        "extra": part["extra"],
        "metric_name": metric_name,
        "metric": None if metric is None else float(metric),
        "epoch": int(epoch),
    })


def load_weights(distiller: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load the student (and extra modules) of a ``best.pt`` or ``last.pt`` into ``distiller``."""
    ckpt = read_checkpoint(path)
    tm = distiller.trainable_modules()
    tm.load_state_dict(ckpt["trainable"] if "trainable" in ckpt else ckpt["model"])
    return ckpt


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with ``weights_only=True`` and check ``format_version``."""
    ckpt = torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("format_version"), int):
        raise UserError(f"{path} is not an xkd checkpoint (no format_version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"{path} has format_version {ckpt['format_version']}, newer than this xkd "
                        f"({FORMAT_VERSION}); upgrade xkd")
    return ckpt


def save_last(path: Path, *, distiller: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: Any, scaler: Any, epoch: int, step: int, seed: int, best_metric: float | None,
              best_epoch: int, last_val: dict[str, float], seconds: float, complete: bool,
              train_config: dict[str, Any], metric_name: str,
              extra_optimizers: list[Any] | None = None, first_loss: float | None = None) -> None:
    """``extra_optimizers``: the separately declared optimisers
    (:class:`xkd.engine.optim.ExtraOptimizer`), stored by name under ``extra_optimizers``;
    ``first_loss``: the first step's loss, the reference of the divergence guard."""
    torch_save(path, {
        "format_version": FORMAT_VERSION,
        "kind": "last",
        "trainable": trainable_state(distiller),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "extra_optimizers": {e.name: {"optimizer": e.optimizer.state_dict(),
                                      "scheduler": e.scheduler.state_dict()}
                             for e in (extra_optimizers or [])},
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": rng_state(),
        "epoch": int(epoch),
        "step": int(step),
        "seed": int(seed),
        "best_metric": None if best_metric is None else float(best_metric),
        "best_epoch": int(best_epoch),
        "metric_name": metric_name,
        "last_val": {k: float(v) for k, v in last_val.items()},
        "seconds": float(seconds),
        "complete": bool(complete),
        "train_config": train_config,
        "first_loss": None if first_loss is None else float(first_loss),
    })
