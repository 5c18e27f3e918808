"""Optimisers and per-step learning-rate schedules from the ``train`` config (DESIGN section 6).

The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR` over the *optimiser step* count, so
its ``state_dict`` (including the :class:`LRSchedule` callable's plain-typed attributes) round-trips
through ``torch.load(weights_only=True)``. With ``S`` steps per epoch, ``E`` epochs,
``W = round(warmup_epochs * S)`` warm-up steps and step index ``s`` (0-based, the step whose update
uses the rate), the factor applied to each group's base rate is

* warm-up (``s < W``): ``(s + 1) / W`` (linear; Goyal et al. 2017, "Accurate, Large Minibatch SGD");
* ``constant``: 1;
* ``step``: ``gamma ** #{m in milestones : s >= m * S}`` (milestones in epochs);
* ``cosine``: ``r + (1 - r) * (1 + cos(pi * (s - W) / (E*S - W))) / 2`` with ``r = min_lr / lr``
  (SGDR without restarts, Loshchilov & Hutter 2017, eq. 5).

A distiller may also declare whole separate optimisers (``optimizer_groups()``, e.g. FFSD's Adam
for its self-distillation modules): :func:`build_extra_optimizers` builds them, each with the same
schedule factor over its own base rate; the engine steps and checkpoints them after the main one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pydantic import ValidationError

from xkd.config import OptimizerConfig, ScheduleConfig
from xkd.errors import ConfigError, UserError

if TYPE_CHECKING:
    from xkd.distill.base import Distiller


def param_groups(distiller: "Distiller", lr: float) -> list[dict[str, Any]]:
    """Parameter groups: those a distiller declares via ``param_groups()``, then every remaining
    trainable parameter of ``trainable_modules()`` in one default group.

    A declared group is a dict with ``params`` plus optional optimiser settings (``lr``,
    ``weight_decay``, ...); a declared ``lr_scale`` multiplies the configured ``lr``. Parameters
    with ``requires_grad=False`` are skipped, and no parameter appears twice. Parameters that a
    distiller gives a separate optimiser (:func:`separate_optimizer_specs`) are left out.
    """
    seen: set[int] = {id(p) for _name, params, _over in separate_optimizer_specs(distiller)
                      for p in params}
    groups: list[dict[str, Any]] = []
    for g in distiller.param_groups():
        g = dict(g)
        params = [p for p in g.pop("params") if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        scale = g.pop("lr_scale", None)
        if scale is not None:
            g["lr"] = lr * float(scale)
        if params:
            groups.append({"params": params, **g})
    rest = [p for p in distiller.trainable_modules().parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups.insert(0, {"params": rest})
    if not groups:
        raise ConfigError("students", "the model has no trainable parameters")
    return groups


def build_optimizer(distiller: "Distiller", cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay), Adam or AdamW over :func:`param_groups`.

    Weight decay applies to every parameter (BatchNorm and biases included), as in the KD
    literature's CIFAR recipe; a declared group may set its own ``weight_decay``.
    """
    return _make_optimizer(param_groups(distiller, cfg.lr), cfg)


def _make_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError("train.optimizer.name", f"unknown optimizer '{cfg.name}'; allowed: sgd, adam, adamw")


class LRSchedule:
    """Callable ``step -> factor``; its attributes are plain ints/floats/lists, so ``LambdaLR``
    saves them in its ``state_dict`` and they load with ``weights_only=True``."""

    def __init__(self, name: str, steps_per_epoch: int, epochs: int, warmup_epochs: float = 0.0,
                 milestones: list[int] | None = None, gamma: float = 0.1,
                 min_factor: float = 0.0) -> None:
        if steps_per_epoch < 1:
            raise ConfigError("train.batch_size", "the training set yields no batches")
        self.name = str(name)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(epochs) * self.steps_per_epoch
        self.warmup_steps = int(round(float(warmup_epochs) * self.steps_per_epoch))
        self.milestone_steps = [int(m) * self.steps_per_epoch for m in (milestones or [])]
        self.gamma = float(gamma)
        self.min_factor = float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.name == "constant":
            return 1.0
        if self.name == "step":
            return self.gamma ** sum(1 for m in self.milestone_steps if step >= m)
        if self.name == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            t = min(max(step - self.warmup_steps, 0) / span, 1.0)
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        raise ConfigError("train.schedule.name",
                          f"unknown schedule '{self.name}'; allowed: constant, step, cosine")


def build_scheduler(optimizer: torch.optim.Optimizer, sched: ScheduleConfig, lr: float,
                    epochs: int, steps_per_epoch: int) -> LambdaLR:
    """A per-step :class:`LambdaLR` (call ``.step()`` after every optimiser step)."""
    if sched.name == "cosine" and sched.min_lr > lr:
        raise ConfigError("train.schedule.min_lr", f"{sched.min_lr} is above train.optimizer.lr ({lr})")
    if sched.warmup_epochs > epochs:
        raise ConfigError("train.schedule.warmup_epochs",
                          f"{sched.warmup_epochs} is longer than train.epochs ({epochs})")
    fn = LRSchedule(sched.name, steps_per_epoch, epochs, sched.warmup_epochs, sched.milestones,
                    sched.gamma, sched.min_lr / lr)
    fn(0)  # validates the name
    return LambdaLR(optimizer, lr_lambda=fn)


# ------------------------------------------------------------------ separate optimisers


@dataclass
class ExtraOptimizer:
    """A separately declared optimiser (``distiller.optimizer_groups()``) and its schedule."""

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR


def separate_optimizer_specs(distiller: "Distiller") -> list[tuple[str, list[nn.Parameter], dict[str, Any]]]:
    """``(name, params, overrides)`` for each optimiser a distiller declares in
    ``optimizer_groups()``: a dict ``name -> {"params": [...], **overrides}`` where the overrides
    are :class:`~xkd.config.OptimizerConfig` fields (``name``, ``lr``, ``momentum``,
    ``nesterov``, ``weight_decay``) or ``lr_scale`` (times the configured ``lr``). Unset fields
    inherit the ``train.optimizer`` section. Parameters with ``requires_grad=False`` are skipped.
    """
    out: list[tuple[str, list[nn.Parameter], dict[str, Any]]] = []
    seen: set[int] = set()
    for name, spec in distiller.optimizer_groups().items():
        spec = dict(spec)
        params = [p for p in spec.pop("params") if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if name == "main":
            raise UserError(f"{type(distiller).__name__}.optimizer_groups(): 'main' is reserved for "
                            "the engine's optimiser; pick another name")
        if params:
            out.append((str(name), params, spec))
    return out


def build_extra_optimizers(distiller: "Distiller", cfg: OptimizerConfig, sched: ScheduleConfig,
                           epochs: int, steps_per_epoch: int) -> list[ExtraOptimizer]:
    """The separate optimisers a distiller declares, each with the ``train.schedule`` factor
    applied to its own base rate (``min_lr`` scaled by its lr / ``train.optimizer.lr``).

    The engine sums every loss and back-propagates once, then steps the main optimiser and these
    in declaration order, so a method whose losses each reach only their own parameters (FFSD)
    gets exactly the updates of one optimiser per loss.
    """
    out: list[ExtraOptimizer] = []
    for name, params, over in separate_optimizer_specs(distiller):
        merged = cfg.model_dump()
        scale = over.pop("lr_scale", None)
        merged.update(over)
        if scale is not None:
            merged["lr"] = cfg.lr * float(scale)
        try:
            ocfg = OptimizerConfig.model_validate(merged)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            raise UserError(f"{type(distiller).__name__}.optimizer_groups()['{name}']: "
                            f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
        opt = _make_optimizer([{"params": params}], ocfg)
        s_cfg = sched.model_copy(update={"min_lr": sched.min_lr * ocfg.lr / cfg.lr})
        out.append(ExtraOptimizer(name, opt, build_scheduler(opt, s_cfg, ocfg.lr, epochs, steps_per_epoch)))
    return out


@dataclass
class OptimizerSet:
    """Every optimiser of a distiller: the main one with its schedule, then the separately
    declared ones (:func:`build_extra_optimizers`). One backward pass, then :meth:`step`."""

    main: torch.optim.Optimizer
    scheduler: LambdaLR
    extras: list[ExtraOptimizer]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The main optimiser first, then the extras in declaration order."""
        return [self.main] + [e.optimizer for e in self.extras]

    def zero_grad(self) -> None:
        for o in self.optimizers():
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Step every optimiser, then every schedule (per-step schedules)."""
        for o in self.optimizers():
            o.step()
        self.scheduler.step()
        for e in self.extras:
            e.scheduler.step()


def build_optimizers(distiller: "Distiller", optimizer: OptimizerConfig | dict[str, Any] | None = None,
                     schedule: ScheduleConfig | dict[str, Any] | None = None, epochs: int = 1,
                     steps_per_epoch: int = 1, **settings: Any) -> OptimizerSet:
    """The :class:`OptimizerSet` of a distiller (``Distiller.configure_optimizers``; the engine's
    path too). ``settings`` are :class:`OptimizerConfig` fields that override ``optimizer``."""
    def as_model(value: Any, kind: type, extra: dict[str, Any]) -> Any:
        base = value.model_dump() if hasattr(value, "model_dump") else dict(value or {})
        try:
            return kind.model_validate({**base, **extra})
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            raise UserError(f"configure_optimizers: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    ocfg = as_model(optimizer, OptimizerConfig, settings)
    scfg = as_model(schedule, ScheduleConfig, {})
    main = build_optimizer(distiller, ocfg)
    sched = build_scheduler(main, scfg, ocfg.lr, epochs, steps_per_epoch)
    extras = build_extra_optimizers(distiller, ocfg, scfg, epochs, steps_per_epoch)
    return OptimizerSet(main, sched, extras)
