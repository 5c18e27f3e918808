"""The training loop: ``fit(distiller, ...)`` (DESIGN sections 3.4, 5 and 6).

One engine trains every model: a :class:`~xkd.distill.base.Distiller` returns logits and named
losses; the engine sums them, optimises ``trainable_modules()`` (plus declared ``param_groups()``
and any separate optimisers declared in ``optimizer_groups()``), evaluates, logs
``history.jsonl`` and checkpoints ``last.pt``/``best.pt`` so ``resume=True`` continues exactly.
Epochs in history, checkpoints and logs are numbered from 1 (``epoch`` = epochs completed);
``distiller(batch, epoch)`` receives the 0-indexed epoch (``epoch - 1``), as in the ReviewKD
warm-up ``min(1, epoch / warmup)`` that is exactly zero in the first epoch.
Randomness per epoch depends only on ``(seed, epoch, rank)``: the shuffling order and the global
python/numpy/torch RNGs (augmentation, dropout) are re-seeded at every epoch start. The per-epoch
step itself (AMP, NaN checks, rank-reduced means) lives in :mod:`xkd.engine.loop`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from xkd import FORMAT_VERSION
from xkd.config import TrainConfig
from xkd.engine import checkpoint as ck
from xkd.engine import distributed as D
from xkd.engine.env import derive_seed, seed_everything, set_determinism
from xkd.engine.evaluate import evaluate_predictions, predict
from xkd.engine.loaders import FitLoaders
from xkd.engine.loop import epoch_batches, reduce_stats, train_epoch
from xkd.engine.precision import resolve_precision, to_channels_last
from xkd.errors import ConfigError, TrainingDiverged, UserError
from xkd.io import append_jsonl, read_jsonl, write_text
from xkd.runfolder import beat

if TYPE_CHECKING:
    from xkd.distill.base import Distiller


@dataclass
class FitResult:
    """Outcome of :func:`fit`. ``best_metric`` is ``None`` when there was no validation set."""

    best_metric: float | None
    best_epoch: int
    epochs_run: int
    last_val: dict[str, float]
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    metric_name: str = "val_acc"
    complete: bool = True


def _metric_mode(name: str, task: str) -> str:
    if task == "regression" and name == "val_acc":
        raise ConfigError("train.select_metric", "'val_acc' does not apply to a regression task; "
                                                 "use val_mae or val_loss")
    if task == "classification" and name == "val_mae":
        raise ConfigError("train.select_metric", "'val_mae' does not apply to a classification "
                                                 "task; use val_acc or val_loss")
    return "max" if name.endswith("acc") else "min"


def _diverged(desc: str, epoch: int, step: int, what: str, out_dir: Path, good_epoch: int) -> TrainingDiverged:
    who = f"{desc}: " if desc else ""
    kept = (f"last good checkpoint {out_dir / ck.LAST} (epoch {good_epoch}) is kept"
            if good_epoch > 0 else "no checkpoint was written")
    return TrainingDiverged(f"{who}training diverged at epoch {epoch}, step {step}: {what}; {kept}; "
                            "lower train.optimizer.lr, add train.schedule.warmup_epochs or set train.grad_clip")


def _validate(distiller: "Distiller", val_set: DataLoader | Dataset | None, device: torch.device,
              batch_size: int, task: str, num_workers: int) -> dict[str, float]:
    """Validation on rank 0 only (its metrics are broadcast to the other ranks); ``val_set``
    may be a (persistent) loader of the split in order."""
    val: dict[str, float] = {}
    if val_set is not None and D.is_main_process():
        logits, labels = predict(distiller.student, val_set, device, batch_size, num_workers,
                                 input_key=distiller.student_key)
        m = evaluate_predictions(logits, labels, task)
        val = {f"val_{k}": float(v) for k, v in m.items() if k != "n"}
    return D.broadcast_object(val)


def _history_until(path: Path, epoch: int, warn: Callable[[str], Any]) -> list[dict[str, Any]]:
    """Rows with ``epoch <= epoch``, one per epoch (the file is rewritten without later rows and
    without a torn last line, which ``warn`` mentions)."""
    rows: dict[int, dict[str, Any]] = {}
    for r in read_jsonl(path, warn=warn):
        if int(r.get("epoch", 0)) <= epoch:
            rows[int(r["epoch"])] = r
    kept = [rows[k] for k in sorted(rows)]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _best_behind_last(best_path: Path, ckpt: dict[str, Any]) -> bool:
    """Whether ``last.pt`` says its own epoch was the best but ``best.pt`` does not hold it (a run
    stopped between writing the two): the weights in ``last.pt`` are then the best ones."""
    if ckpt["best_epoch"] != ckpt["epoch"]:
        return False
    try:
        return ck.read_checkpoint(best_path).get("epoch") != ckpt["epoch"]
    except UserError:
        return True


def _blown_up(loss: float, first: float | None, factor: float | None) -> bool:
    """A finite blow-up: the epoch's mean loss beyond ``factor`` x the first step's loss."""
    return factor is not None and first is not None and abs(loss) > factor * max(abs(first), 1e-3)


def fit(distiller: "Distiller", train_set: Dataset, val_set: Dataset | None, cfg: TrainConfig,
        out_dir: str | Path, *, device: torch.device, seed: int, deterministic: bool = False,
        resume: bool = False, task: str = "classification", num_workers: int = 0,
        persistent_workers: bool = True, desc: str = "",
        log: Callable[[str], Any] | None = print, stop_after_epoch: int | None = None,
        on_epoch_end: Callable[[dict[str, Any]], Any] | None = None) -> FitResult:
    """Train ``distiller`` for ``cfg.epochs`` epochs, writing history and checkpoints to ``out_dir``.

    ``resume=True`` continues from ``out_dir/last.pt`` (a fresh start when there is none; when it
    is complete, its final weights are loaded and the stored result returned without training). ``stop_after_epoch`` ends early after that epoch (the run
    stays resumable). Raises :class:`TrainingDiverged` on a NaN/inf loss, keeping the last good
    ``last.pt``. Under DDP (:func:`xkd.engine.init_distributed` first) only rank 0 writes files.
    A ``train_set`` with an ``augment_batch(batch)`` method (:class:`xkd.data.JointAugment`) is
    augmented per batch on ``device``. With ``num_workers > 0`` and ``persistent_workers`` the
    loaders' workers live for the whole fit (:class:`xkd.engine.loaders.FitLoaders`; the dataset's
    ``__getitem__`` must then draw no random numbers, as no built-in one does).
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    main = D.is_main_process()
    say = (log if (log is not None and main) else (lambda _m: None))
    # select_metric null: the pipeline resolves it by task (RunContext.train_cfg); here it is val_acc
    metric_name = cfg.select_metric or "val_acc"
    mode = _metric_mode(metric_name, task)
    better = (lambda a, b: b is None or (a > b if mode == "max" else a < b))
    set_determinism(deterministic)
    last_path, best_path, hist_path = out_dir / ck.LAST, out_dir / ck.BEST, out_dir / ck.HISTORY
    train_cfg = cfg.model_dump(mode="json")

    ckpt = ck.read_checkpoint(last_path) if resume and last_path.is_file() else None
    if ckpt is not None:
        diff = sorted(k for k in set(train_cfg) | set(ckpt["train_config"])
                      if train_cfg.get(k) != ckpt["train_config"].get(k))
        if diff or ckpt["seed"] != seed:
            what = ", ".join([f"train.{k}" for k in diff] + (["seed"] if ckpt["seed"] != seed else []))
            raise UserError(f"cannot resume {last_path}: it was written with different {what}; "
                            "restore those settings or start a new run without --resume")
        if ckpt["complete"]:  # leave the distiller as training left it, on the device
            distiller.to(device)
            distiller.trainable_modules().load_state_dict(ckpt["trainable"])
            say(f"{desc}: already trained ({ckpt['epoch']} epochs), using {last_path}")
            if main and _best_behind_last(best_path, ckpt):
                ck.save_best(best_path, distiller, metric_name, ckpt["best_metric"], ckpt["epoch"])
            return FitResult(ckpt["best_metric"], ckpt["best_epoch"], ckpt["epoch"], ckpt["last_val"],
                             ckpt["seconds"], read_jsonl(hist_path, warn=say), metric_name, True)

    distiller.to(device)  # the teacher moves with it (Distiller._apply)
    n_batches = len(epoch_batches(len(train_set), cfg.batch_size, seed, 1, train_set))
    n_steps = min(n_batches, cfg.max_steps_per_epoch or n_batches)
    opts = distiller.configure_optimizers(cfg.optimizer, cfg.schedule, cfg.epochs, n_steps)
    opt, sched, extra = opts.main, opts.scheduler, opts.extras
    prec = resolve_precision(cfg.amp, cfg.amp_dtype, cfg.channels_last, device)
    scaler = prec.grad_scaler()
    if prec.channels_last:  # the frozen teacher is not a submodule of the distiller
        for m in (distiller, getattr(distiller, "teacher", None)):
            if m is not None:
                to_channels_last(m)
    if prec.autocast or prec.channels_last:
        say(f"{desc}: precision {prec.describe()}")

    start, step, best, best_epoch, last_val, spent = 0, 0, None, 0, {}, 0.0
    first_loss: float | None = None  # the first step's loss: the divergence guard's reference
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        try:
            distiller.trainable_modules().load_state_dict(ckpt["trainable"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise UserError(f"cannot resume {last_path}: its weights do not fit this model ({first}); "
                            "start a new run without --resume") from None
        states = {"main": ckpt["optimizer"], **{k: v["optimizer"] for k, v in
                                                 ckpt.get("extra_optimizers", {}).items()}}
        for name, o in [("main", opt)] + [(e.name, e.optimizer) for e in extra]:
            if name not in states:
                raise UserError(f"cannot resume {last_path}: it holds no state for the '{name}' "
                                "optimiser; start a new run without --resume")
            try:
                o.load_state_dict(states[name])
            except ValueError:
                raise UserError(f"cannot resume {last_path}: its '{name}' optimiser state does not fit "
                                "this distiller's parameters; start a new run without --resume") from None
        sched.load_state_dict(ckpt["scheduler"])
        for e in extra:
            e.scheduler.load_state_dict(ckpt["extra_optimizers"][e.name]["scheduler"])
        if prec.scaler and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        ck.set_rng_state(ckpt["rng"])
        start, step, best, best_epoch = ckpt["epoch"], ckpt["step"], ckpt["best_metric"], ckpt["best_epoch"]
        last_val, spent = dict(ckpt["last_val"]), ckpt["seconds"]
        first_loss = ckpt.get("first_loss")
        if main:
            history = _history_until(hist_path, start, say)
            if _best_behind_last(best_path, ckpt):  # stopped between last.pt and best.pt
                ck.save_best(best_path, distiller, metric_name, best, start)
        say(f"{desc}: resuming after epoch {start} from {last_path}")
    elif main:
        for p in (last_path, best_path, hist_path):
            p.unlink(missing_ok=True)
    D.barrier()

    model: nn.Module = distiller
    if D.is_distributed():
        from torch.nn.parallel import DistributedDataParallel as DDP

        owned = {id(p) for p in distiller.parameters()}
        if any(id(p) not in owned for p in distiller.trainable_modules().parameters()):
            raise UserError(f"{type(distiller).__name__}.extra_modules() returns modules that are not "
                            "attributes of the distiller; DDP cannot synchronise them")
        model = DDP(distiller, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=distiller.ddp_find_unused_parameters)

    rank = D.current().rank
    loaders = FitLoaders(train_set, val_set if main else None, cfg.batch_size, num_workers,
                         persistent_workers, device.type == "cuda", seed, rank)
    epoch = start
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.time()
        seed_everything(derive_seed(seed, epoch, rank, 1))
        batches = epoch_batches(len(train_set), cfg.batch_size, seed, epoch, train_set)[:n_steps]
        loader = loaders.train(batches, epoch)
        lr = float(opt.param_groups[0]["lr"])
        bad = (lambda i, what, e=epoch: _diverged(desc, e, i, what, out_dir, e - 1))
        stats = train_epoch(model, distiller, loader, len(batches), epoch - 1, opt, sched, scaler, cfg, device,
                             prec, task, f"{desc} {epoch}/{cfg.epochs}".strip(), bad, extra,
                             augment=getattr(train_set, "augment_batch", None))
        step += len(batches)
        D.broadcast_buffers(distiller)
        if not all(torch.isfinite(p).all() for p in distiller.trainable_modules().parameters()):
            raise bad(len(batches), "parameters became NaN/inf")
        agg = reduce_stats(stats)
        if first_loss is None:
            first_loss = D.broadcast_object(stats.get("first_loss"))
        if _blown_up(agg["loss"], first_loss, cfg.diverge_factor):
            raise bad(len(batches), f"the mean training loss {agg['loss']:.4g} exceeds "
                                    f"train.diverge_factor ({cfg.diverge_factor:g}) x the first step's "
                                    f"loss {first_loss:.4g}")
        row: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr, "loss": agg["loss"],
                               "losses": agg["losses"]}
        row["train_acc" if task == "classification" else "train_mae"] = agg["hits"]
        if agg["logs"]:
            row["logs"] = agg["logs"]
        evaluated = epoch % cfg.eval_every == 0 or epoch == cfg.epochs
        improved = False
        if evaluated:
            val = _validate(distiller, loaders.val(), device, cfg.batch_size, task, num_workers)
            if val:
                last_val = val
                row.update(val)
                if metric_name not in val:
                    raise ConfigError("train.select_metric", f"'{metric_name}' is not among {sorted(val)}")
                if better(val[metric_name], best):
                    best, best_epoch, improved = val[metric_name], epoch, True
            elif val_set is None:
                best_epoch, improved = epoch, True
        row["seconds"] = time.time() - t0
        spent += row["seconds"]
        complete = epoch == cfg.epochs
        if main:
            append_jsonl(hist_path, row)
            ck.save_last(last_path, distiller=distiller, optimizer=opt, scheduler=sched,
                         scaler=scaler if prec.scaler else None, epoch=epoch, step=step, seed=seed,
                         best_metric=best, best_epoch=best_epoch, last_val=last_val, seconds=spent,
                         complete=complete, train_config=train_cfg, metric_name=metric_name,
                         extra_optimizers=extra, first_loss=first_loss)
            if improved:  # after last.pt: a stop in between is repaired on resume (_best_behind_last)
                ck.save_best(best_path, distiller, metric_name, best, epoch)
            history.append({"format_version": FORMAT_VERSION, **row})
            beat()
        D.barrier()
        say(_line(desc, row, cfg.epochs))
        distiller.epoch_end(row)
        if on_epoch_end is not None:
            on_epoch_end(row)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    if not main:
        history = []
    return FitResult(best, best_epoch, epoch, last_val, spent, history, metric_name, epoch >= cfg.epochs)


def _line(desc: str, row: dict[str, Any], epochs: int) -> str:
    keys = [k for k in ("loss", "train_acc", "train_mae", "val_acc", "val_mae", "val_loss") if k in row]
    body = " ".join(f"{k} {row[k]:.4f}" for k in keys)
    return f"{desc + ' ' if desc else ''}epoch {row['epoch']}/{epochs} lr {row['lr']:.4g} {body} ({row['seconds']:.1f} s)"
