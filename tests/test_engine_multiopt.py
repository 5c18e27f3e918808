"""Separately declared optimisers (``optimizer_groups()``): construction, stepping, exact resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from tests.test_engine_helpers import TinyData, TinyDistiller, TinyNet, state, train_cfg
from xkd.config import OptimizerConfig, ScheduleConfig
from xkd.distill.base import StepOutput
from xkd.engine import fit
from xkd.engine.loop import epoch_batches
from xkd.engine.optim import build_extra_optimizers, build_optimizer, param_groups
from xkd.errors import UserError
from xkd.io import torch_load, torch_save

CPU = torch.device("cpu")


class TwoOpt(TinyDistiller):
    """CE on the student; the ``aux`` head (its own loss on the detached pooled features) is
    trained by a separate Adam optimiser, as FFSD's self-distillation modules are."""

    def __init__(self, seed: int = 0, over: dict | None = None) -> None:
        torch.manual_seed(seed)
        super().__init__(TinyNet(3))
        self.over = {"name": "adam", "lr": 0.01, "weight_decay": 0.0} if over is None else over

    def optimizer_groups(self) -> dict[str, dict]:
        return {"aux": {"params": list(self.head.parameters()), **self.over}}

    def forward(self, batch, epoch):
        f = self.student.features(batch["image"])
        y = batch["label"]
        aux = (self.head(f.pooled.detach())[:, 0] - y.float()).pow(2).mean()
        return StepOutput(f.logits, {"ce": F.cross_entropy(f.logits, y), "aux": aux})


def test_declared_optimiser_is_built_apart_from_the_main_one():
    d = TwoOpt(over={"name": "adam", "lr_scale": 0.1, "weight_decay": 0.0})
    head = {id(p) for p in d.head.parameters()}
    main = build_optimizer(d, OptimizerConfig(name="sgd", lr=0.2))
    assert not head & {id(p) for g in main.param_groups for p in g["params"]}
    assert not head & {id(p) for g in param_groups(d, 0.2) for p in g["params"]}
    sched = ScheduleConfig(name="cosine", min_lr=0.02)
    (extra,) = build_extra_optimizers(d, OptimizerConfig(name="sgd", lr=0.2), sched, 2, 3)
    assert extra.name == "aux" and type(extra.optimizer) is torch.optim.Adam
    assert {id(p) for p in extra.optimizer.param_groups[0]["params"]} == head
    assert extra.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # lr_scale × train lr
    for _ in range(6):  # the schedule ends at min_lr scaled by 0.02 / 0.2
        extra.optimizer.step()
        extra.scheduler.step()
    assert extra.optimizer.param_groups[0]["lr"] == pytest.approx(0.002, rel=1e-6)
    with pytest.raises(UserError, match=r"optimizer_groups\(\)\['aux'\]: name"):
        build_extra_optimizers(TwoOpt(over={"name": "lion"}), OptimizerConfig(), sched, 2, 3)


def test_one_backward_then_each_optimiser_equals_separate_updates(tmp_path):
    """The engine sums the losses, back-propagates once and steps each optimiser: for losses that
    reach disjoint parameters this is exactly one optimiser per loss (FFSD's update order)."""
    cfg = train_cfg(epochs=1, batch_size=48, schedule={"name": "constant"},
                    optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0})
    d = TwoOpt(seed=3)
    d.student.drop.p = 0.0
    ref = copy.deepcopy(d)
    data = TinyData(48, flip=False)
    fit(d, data, None, cfg, tmp_path, device=CPU, seed=5, log=None)
    # by hand: the same batch through separate optimisers, each stepping on its own loss
    (idx,) = epoch_batches(48, 48, 5, 1, data)
    batch = {k: torch.stack([data[i][k] for i in idx]) for k in ("image", "label")}
    ref.train()
    sgd = torch.optim.SGD(ref.student.parameters(), lr=0.1)
    adam = torch.optim.Adam(ref.head.parameters(), lr=0.01)
    out = ref(batch, 0)
    sgd.zero_grad()
    out.losses["ce"].backward(retain_graph=True)
    assert all(p.grad is None for p in ref.head.parameters())  # ce never reaches the head
    sgd.step()
    adam.zero_grad()
    out.losses["aux"].backward()
    adam.step()
    a, b = state(d), state(ref)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_resume_restores_the_declared_optimiser_exactly(tmp_path):
    cfg = train_cfg(epochs=3)
    full = TwoOpt(seed=0)
    fit(full, TinyData(48), TinyData(24, seed=1), cfg, tmp_path / "full", device=CPU, seed=7,
        log=None, deterministic=True)
    part = TwoOpt(seed=0)
    fit(part, TinyData(48), TinyData(24, seed=1), cfg, tmp_path / "part", device=CPU, seed=7,
        log=None, deterministic=True, stop_after_epoch=1)
    last = torch_load(tmp_path / "part" / "last.pt")
    assert last["extra_optimizers"]["aux"]["optimizer"]["state"], "Adam moments are saved"
    resumed = TwoOpt(seed=42)
    fit(resumed, TinyData(48), TinyData(24, seed=1), cfg, tmp_path / "part", device=CPU, seed=7,
        log=None, deterministic=True, resume=True)
    a, b = state(full), state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a checkpoint without that optimiser's state (older format, or another distiller) is refused
    last.pop("extra_optimizers")
    last["complete"] = False
    torch_save(tmp_path / "part" / "last.pt", last)
    with pytest.raises(UserError, match="no state for the 'aux' optimiser"):
        fit(TwoOpt(), TinyData(48), None, cfg, tmp_path / "part", device=CPU, seed=7, log=None,
            resume=True)
    plain = TinyDistiller(TinyNet(3))
    fit(plain, TinyData(48), None, cfg, tmp_path / "plain", device=CPU, seed=7, log=None,
        stop_after_epoch=1)
    with pytest.raises(UserError, match="'main' optimiser state does not fit"):
        fit(TwoOpt(), TinyData(48), None, cfg, tmp_path / "plain", device=CPU, seed=7, log=None,
            resume=True)


def test_reserved_name_is_refused():
    class Bad(TwoOpt):
        def optimizer_groups(self):
            return {"main": {"params": list(self.head.parameters())}}

    with pytest.raises(UserError, match="'main' is reserved"):
        build_optimizer(Bad(), OptimizerConfig())
