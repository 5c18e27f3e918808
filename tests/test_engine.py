"""Engine: exact resume, checkpoints, divergence, history, regression and evaluation helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.test_engine_helpers import TinyData, TinyNet, make, state, train_cfg
from xkd.engine import fit, load_weights, set_determinism
from xkd.errors import ConfigError, TrainingDiverged, UserError

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _restore_determinism():
    yield
    set_determinism(False)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run(d, out, cfg, **kw):
    kw.setdefault("log", None)
    return fit(d, TinyData(48), TinyData(24, seed=1), cfg, out, device=CPU, seed=7, **kw)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_interrupted_resume_is_bit_identical(tmp_path, opt):
    cfg = train_cfg(optimizer={"name": opt, "lr": 0.05 if opt == "sgd" else 0.01, "weight_decay": 1e-3})
    full = make(seed=0)
    r_full = _run(full, tmp_path / "full", cfg, deterministic=True)

    part = make(seed=0)
    r_part = _run(part, tmp_path / "part", cfg, deterministic=True, stop_after_epoch=2)
    assert r_part.epochs_run == 2 and not r_part.complete
    # a crash after the history row of epoch 3 was written but before last.pt was replaced
    with open(tmp_path / "part" / "history.jsonl", "a") as f:
        f.write(json.dumps({"format_version": 1, "epoch": 3, "loss": 123.0}) + "\n")

    resumed = make(seed=99)  # different initial weights: everything must come from last.pt
    r_res = _run(resumed, tmp_path / "part", cfg, deterministic=True, resume=True)

    a, b = state(full), state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert r_res.complete and r_res.epochs_run == 4
    assert r_res.best_metric == r_full.best_metric and r_res.best_epoch == r_full.best_epoch
    assert r_res.last_val == r_full.last_val

    rows_full, rows_res = _rows(tmp_path / "full" / "history.jsonl"), _rows(tmp_path / "part" / "history.jsonl")
    assert [r["epoch"] for r in rows_res] == [1, 2, 3, 4]
    for x, y in zip(rows_full, rows_res):
        x.pop("seconds"), y.pop("seconds")
        assert x == y
    # training did something: weights moved and the loss went down
    assert rows_full[-1]["loss"] < rows_full[0]["loss"]
    assert not torch.equal(state(make(seed=0))["student.fc.weight"], a["student.fc.weight"])


def test_checkpoints_load_weights_only_and_hold_what_is_promised(tmp_path):
    d = make()
    res = _run(d, tmp_path, train_cfg(epochs=3))
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "best.pt", weights_only=True)

    for key in ("trainable", "optimizer", "scheduler", "scaler", "rng", "epoch", "best_metric",
                "best_epoch", "seed", "format_version", "complete", "step"):
        assert key in last, key
    assert last["epoch"] == 3 and last["seed"] == 7 and last["complete"] is True
    assert last["step"] == 3 * 6  # 48 samples / batch 8
    assert set(last["rng"]) >= {"python", "numpy", "torch", "cuda"}
    assert last["optimizer"]["state"], "momentum buffers are saved"
    assert last["scheduler"]["last_epoch"] == 18
    now = state(d)
    assert all(torch.equal(now[k], last["trainable"][k]) for k in now)
    assert any(k.startswith("extra.") for k in last["trainable"])

    rows = _rows(tmp_path / "history.jsonl")
    accs = [r["val_acc"] for r in rows]
    assert best["metric"] == max(accs) == res.best_metric
    assert best["epoch"] == res.best_epoch == 1 + accs.index(max(accs))
    assert best["metric_name"] == "val_acc"
    fresh = TinyNet(3)
    fresh.load_state_dict(best["student"])  # strict: the student's full state
    assert set(best["extra"]) == {"0.weight", "0.bias"}

    other = make(seed=5)
    load_weights(other, tmp_path / "last.pt")
    assert all(torch.equal(state(other)[k], now[k]) for k in now)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    snap = {}

    def on_epoch(row):
        if row["epoch"] == 2:
            snap["bytes"] = (tmp_path / "last.pt").read_bytes()

    d = make(nan_at=(2, 2))  # third epoch (0-indexed 2), second step
    with pytest.raises(TrainingDiverged) as e:
        _run(d, tmp_path, train_cfg(), on_epoch_end=on_epoch, desc="tiny")
    msg = str(e.value)
    assert isinstance(e.value, UserError)
    assert "epoch 3" in msg and "step 2" in msg and "'aux'" in msg and "nan" in msg and "tiny" in msg
    assert "\n" not in msg
    assert (tmp_path / "last.pt").read_bytes() == snap["bytes"]
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and not last["complete"]
    assert all(torch.isfinite(v).all() for v in last["trainable"].values() if v.is_floating_point())
    assert [r["epoch"] for r in _rows(tmp_path / "history.jsonl")] == [1, 2]


def test_completed_run_resume_returns_stored_result_without_training(tmp_path):
    first = make()
    res = _run(first, tmp_path, train_cfg(epochs=2))
    d = make(seed=3)
    d.forward = None  # any training step would fail
    again = _run(d, tmp_path, train_cfg(epochs=2), resume=True)
    final = state(first)
    assert all(torch.equal(state(d)[k], final[k]) for k in final)  # the final weights are loaded
    assert (again.best_metric, again.best_epoch, again.epochs_run, again.last_val) == \
           (res.best_metric, res.best_epoch, 2, res.last_val)
    assert [r["epoch"] for r in again.history] == [1, 2]


def test_resume_with_changed_settings_is_refused(tmp_path):
    _run(make(), tmp_path, train_cfg(), stop_after_epoch=1)
    with pytest.raises(UserError, match="train.batch_size"):
        _run(make(), tmp_path, train_cfg(batch_size=4), resume=True)


def test_history_rows_caps_and_eval_every(tmp_path):
    cfg = train_cfg(epochs=3, max_steps_per_epoch=2, eval_every=2)
    d = make()
    res = _run(d, tmp_path, cfg)
    assert d.epochs_seen == [0, 0, 1, 1, 2, 2]  # the distiller sees 0-indexed epochs
    rows = _rows(tmp_path / "history.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert "val_acc" not in rows[0] and "val_acc" in rows[1] and "val_acc" in rows[2]  # last epoch always
    for r in rows:
        assert set(r["losses"]) == {"ce", "aux"}
        assert math.isclose(r["loss"], r["losses"]["ce"] + r["losses"]["aux"], rel_tol=1e-6)
        assert 0 <= r["train_acc"] <= 1 and r["logs"]["batch"] == 8.0
    assert res.history == rows


def test_regression_task_metrics_and_metric_check(tmp_path):
    d = make(regression=True)
    data, val = TinyData(32, regression=True), TinyData(16, seed=1, regression=True)
    cfg = train_cfg(epochs=2, select_metric="val_mae")
    res = fit(d, data, val, cfg, tmp_path, device=CPU, seed=0, task="regression", log=None)
    row = res.history[-1]
    assert {"val_mae", "val_loss", "train_mae"} <= set(row) and "val_acc" not in row
    assert res.best_metric == min(r["val_mae"] for r in res.history)
    with pytest.raises(ConfigError, match="select_metric"):
        fit(make(regression=True), data, val, train_cfg(), tmp_path / "x", device=CPU, seed=0,
            task="regression", log=None)


def test_no_validation_set_keeps_final_weights_as_best(tmp_path):
    d = make()
    res = fit(d, TinyData(32), None, train_cfg(epochs=2), tmp_path, device=CPU, seed=0, log=None)
    assert res.best_metric is None and res.best_epoch == 2 and res.last_val == {}
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(best["student"]["fc.weight"], d.student.fc.weight.detach())


def test_resume_into_a_different_model_is_a_user_error(tmp_path):
    _run(make(), tmp_path, train_cfg(), stop_after_epoch=1)
    other = make()
    other.head = torch.nn.Linear(4, 2)  # extra module of another shape
    with pytest.raises(UserError, match="do not fit this model"):
        _run(other, tmp_path, train_cfg(), resume=True)
