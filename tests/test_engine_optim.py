"""Optimisers and LR schedules against hand-computed values; scheduler state round-trips."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xkd.config import OptimizerConfig, ScheduleConfig
from xkd.engine.optim import build_optimizer, build_scheduler, param_groups
from xkd.errors import ConfigError
from xkd.io import torch_load, torch_save


class Two(nn.Module):
    """The optimiser-facing part of the Distiller contract, on two linear layers."""

    def __init__(self, declare: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.declare = declare

    def trainable_modules(self) -> nn.ModuleDict:
        return nn.ModuleDict({"student": self.a, "extra": nn.ModuleList([self.b, self.frozen])})

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.b.parameters()), "lr_scale": 0.5, "weight_decay": 0.0}] if self.declare else []

    def optimizer_groups(self) -> dict[str, dict]:
        return {}


def _lrs(sched_cfg: ScheduleConfig, epochs: int, spe: int, lr: float = 0.1) -> list[float]:
    opt = build_optimizer(Two(), OptimizerConfig(name="sgd", lr=lr))
    sched = build_scheduler(opt, sched_cfg, lr, epochs, spe)
    out = []
    for _ in range(epochs * spe):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_hand_values():
    # 4 steps/epoch, 5 epochs, 1.5 warm-up epochs -> W = 6 warm-up steps, 14 cosine steps
    lrs = _lrs(ScheduleConfig(name="cosine", warmup_epochs=1.5, min_lr=0.01), 5, 4)
    assert len(lrs) == 20
    for s in range(6):
        assert lrs[s] == pytest.approx(0.1 * (s + 1) / 6)
    assert lrs[6] == pytest.approx(0.1)                      # cosine starts at the peak
    assert lrs[13] == pytest.approx(0.055)                   # half way: (0.1 + 0.01) / 2
    assert lrs[19] == pytest.approx(0.01112824, abs=1e-8)    # 0.01 + 0.045 * (1 - cos(pi/14))
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))


def test_warmup_then_step_hand_values():
    lrs = _lrs(ScheduleConfig(name="step", warmup_epochs=0.5, milestones=[2, 4], gamma=0.1), 5, 4)
    assert lrs[:2] == pytest.approx([0.05, 0.1])
    assert lrs[2:8] == pytest.approx([0.1] * 6)
    assert lrs[8:16] == pytest.approx([0.01] * 8)
    assert lrs[16:] == pytest.approx([0.001] * 4)


def test_constant_and_no_warmup():
    assert _lrs(ScheduleConfig(name="constant"), 2, 3) == pytest.approx([0.1] * 6)
    lrs = _lrs(ScheduleConfig(name="cosine"), 1, 4)
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])


def test_scheduler_state_round_trips_weights_only(tmp_path):
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.001)
    m = Two()
    opt = build_optimizer(m, OptimizerConfig(name="sgd", lr=0.1))
    sched = build_scheduler(opt, cfg, 0.1, 3, 5)
    for _ in range(7):
        opt.step()
        sched.step()
    torch_save(tmp_path / "s.pt", {"opt": opt.state_dict(), "sched": sched.state_dict()})
    saved = torch_load(tmp_path / "s.pt")
    opt2 = build_optimizer(m, OptimizerConfig(name="sgd", lr=0.1))
    sched2 = build_scheduler(opt2, cfg, 0.1, 3, 5)
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    for _ in range(8):
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        for o in (opt, opt2):
            o.step()
        sched.step()
        sched2.step()


def test_optimizer_kinds_and_declared_groups():
    sgd = build_optimizer(Two(), OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    g = sgd.param_groups[0]
    assert g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 1e-4
    assert sum(p.numel() for p in g["params"]) == 12  # a and b, not the frozen layer
    assert not build_optimizer(Two(), OptimizerConfig(momentum=0.0, nesterov=True)).param_groups[0]["nesterov"]
    assert type(build_optimizer(Two(), OptimizerConfig(name="adam", lr=1e-3))) is torch.optim.Adam
    assert type(build_optimizer(Two(), OptimizerConfig(name="adamw", lr=1e-3))) is torch.optim.AdamW

    m = Two(declare=True)
    groups = param_groups(m, 0.2)
    ids = [id(p) for gr in groups for p in gr["params"]]
    assert len(ids) == len(set(ids)) == 4
    opt = build_optimizer(m, OptimizerConfig(name="sgd", lr=0.2, weight_decay=5e-4))
    by_id = {id(p): gr for gr in opt.param_groups for p in gr["params"]}
    assert by_id[id(m.a.weight)]["lr"] == 0.2 and by_id[id(m.a.weight)]["weight_decay"] == 5e-4
    assert by_id[id(m.b.weight)]["lr"] == pytest.approx(0.1) and by_id[id(m.b.weight)]["weight_decay"] == 0.0
    # the schedule scales every group by the same factor
    sched = build_scheduler(opt, ScheduleConfig(name="step", milestones=[1], gamma=0.5), 0.2, 2, 1)
    opt.step()
    sched.step()
    assert [gr["lr"] for gr in opt.param_groups] == pytest.approx([0.1, 0.05])


def test_bad_schedule_settings_name_the_field():
    with pytest.raises(ConfigError, match="train.schedule.min_lr"):
        _lrs(ScheduleConfig(name="cosine", min_lr=1.0), 2, 2)
    with pytest.raises(ConfigError, match="train.schedule.warmup_epochs"):
        _lrs(ScheduleConfig(name="cosine", warmup_epochs=3), 2, 2)
