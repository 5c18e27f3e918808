"""The engine does a plain training loop's work and nothing that changes its result: ``fit`` gives
bit-identical weights, and the same epoch loss and accuracy, as a hand-written loop over the same
seeded batches, global-RNG seeding, SGD and constant rate (issue 17: engine overhead)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.test_engine_helpers import TinyData, TinyDistiller, make, state, train_cfg
from xkd.engine import fit
from xkd.engine.env import derive_seed


class TensorLogs(TinyDistiller):
    """Also logs the aux loss as a 0-d tensor (the engine accumulates tensor logs on the device)."""

    def forward(self, batch, epoch):
        out = super().forward(batch, epoch)
        out.logs["aux_t"] = out.losses["aux"].detach()
        return out


def _plain_loop(d, data, epochs: int, bs: int, seed: int, lr: float, regression: bool = False):
    """Epoch e: global RNGs seeded from (seed, e, rank 0, 1), sample order randperm seeded from
    (seed, e) in batches of ``bs`` (a trailing single sample dropped), one SGD step per batch on
    the sum of the distiller's losses. Returns the per-epoch mean loss and accuracy."""
    params = list(d.trainable_modules().parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rows = []
    for epoch in range(1, epochs + 1):
        s = derive_seed(seed, epoch, 0, 1)
        torch.manual_seed(s)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(derive_seed(seed, epoch))).tolist()
        batches = [order[i:i + bs] for i in range(0, len(order), bs)]
        if len(batches[-1]) == 1:
            batches.pop()
        d.train()
        loss_sum, hits, aux_sum, n = 0.0, 0.0, 0.0, 0
        for idx in batches:
            samples = [data[i] for i in idx]
            batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
            out = d(batch, epoch - 1)
            loss = out.losses["ce"] + out.losses["aux"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            if regression:
                hits += float((out.logits.detach()[:, 0] - batch["label"]).abs().sum())
            else:
                hits += int((out.logits.argmax(1) == batch["label"]).sum())
            aux_sum += float(out.losses["aux"].detach()) * len(idx)
            n += len(idx)
        rows.append((loss_sum / n, hits / n, aux_sum / n))
    return rows


def _make(regression: bool) -> TensorLogs:
    base = make(seed=0, regression=regression)
    d = TensorLogs(base.student, regression=regression)
    d.head.load_state_dict(base.head.state_dict())
    return d


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fit_matches_a_plain_loop_bit_for_bit(tmp_path, task):
    lr, epochs, bs, seed, reg = 0.05, 3, 8, 11, task == "regression"
    cfg = train_cfg(epochs=epochs, batch_size=bs, select_metric="val_mae" if reg else None,
                    optimizer={"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                    schedule={"name": "constant", "warmup_epochs": 0})
    engine, plain = _make(reg), _make(reg)
    fit(engine, TinyData(50, regression=reg), None, cfg, tmp_path, device=torch.device("cpu"), seed=seed,
        log=None, task=task)
    rows = _plain_loop(plain, TinyData(50, regression=reg), epochs, bs, seed, lr, reg)
    got, want = state(engine), state(plain)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    hist = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    for r, (loss, hits, aux) in zip(hist, rows):
        assert math.isclose(r["loss"], loss, rel_tol=1e-6)
        assert r["train_mae" if reg else "train_acc"] == hits and r["logs"]["aux_t"] == aux
