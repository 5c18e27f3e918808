"""Conditional GAN training: one step changes G and D, seeded runs are identical, a resumed run
ends bit-identical to an uninterrupted one (classification and CcGAN regression), a finished run
is loaded instead of retrained, mismatched folders are one-line errors, ``generate``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xkd.gan.config import GANConfig
from xkd.gan.training import _Run, generate, load_generator, train_gan
from xkd.data.tensors import TensorSplit
from xkd.errors import UserError
from xkd.io import read_jsonl, torch_load

CPU = torch.device("cpu")


def _data(task: str, n: int = 24, size: int = 8) -> TensorSplit:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 3 if task == "classification" else torch.rand(n, generator=g) * 40 - 20
    return TensorSplit(x, y, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _cfg(**kw) -> GANConfig:
    base = dict(z_dim=8, g_channels=8, d_channels=8, embed_dim=8, batch_size=6, steps=5,
                checkpoint_every=2, log_every=1, ema_start=2, ema_decay=0.9)
    return GANConfig(**{**base, **kw})


def _train(tmp: Path, task: str, name: str, **kw) -> torch.nn.Module:
    nc = 3 if task == "classification" else 1
    return train_gan(kw.pop("cfg", _cfg()), _data(task), task, nc, tmp / name, CPU, seed=kw.pop("seed", 0),
                     log=lambda s: None, **kw)


def _assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            if k != "seconds":  # wall time
                _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            _assert_same(u, v)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_one_step_changes_both_networks(task: str) -> None:
    ds = _data(task)
    run = _Run(_cfg(), task, 3 if task == "classification" else 1, ds.normalise(ds.images),
               ds.labels, CPU, seed=0)
    g0 = [p.detach().clone() for p in run.G.parameters()]
    d0 = [p.detach().clone() for p in run.D.parameters()]
    logs = run.train_step()
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, run.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, run.D.parameters()))
    assert run.step == 1


def test_seeded_runs_are_identical_and_seeds_differ(tmp_path: Path) -> None:
    a = _train(tmp_path, "classification", "a")
    b = _train(tmp_path, "classification", "b")
    c = _train(tmp_path, "classification", "c", seed=1, stop_after=5)
    _assert_same(torch_load(tmp_path / "a" / "last.pt"), torch_load(tmp_path / "b" / "last.pt"))
    assert not a.training
    labels = torch.tensor([0, 1, 2, 0])
    assert torch.equal(generate(a, labels, seed=3), generate(b, labels, seed=3))
    assert not torch.equal(generate(a, labels, seed=3), generate(c, labels, seed=3))
    for f in ("last.pt", "history.jsonl", "generator.pt", "samples.png"):
        assert (tmp_path / "a" / f).is_file()
    assert [r["step"] for r in read_jsonl(tmp_path / "a" / "history.jsonl")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_resume_ends_bit_identical(tmp_path: Path, task: str) -> None:
    _train(tmp_path, task, "full")
    part = _train(tmp_path, task, "cut", stop_after=3)
    assert torch_load(tmp_path / "cut" / "last.pt")["step"] == 3
    assert not (tmp_path / "cut" / "generator.pt").exists() and not part.training
    # a crashed run may have logged beyond its checkpoint: those rows are dropped on resume
    hist = tmp_path / "cut" / "history.jsonl"
    hist.write_text(hist.read_text() + '{"format_version": 1, "step": 4, "loss_g": 9}\n')
    _train(tmp_path, task, "cut", resume=True)
    full, cut = torch_load(tmp_path / "full" / "last.pt"), torch_load(tmp_path / "cut" / "last.pt")
    assert full["step"] == cut["step"] == 5
    _assert_same(full, cut)
    _assert_same(torch_load(tmp_path / "full" / "generator.pt")["state"],
                 torch_load(tmp_path / "cut" / "generator.pt")["state"])
    rows = lambda p: [(r["step"], r["loss_g"]) for r in read_jsonl(p / "history.jsonl")]  # noqa: E731
    assert rows(tmp_path / "cut") == rows(tmp_path / "full")
    secs = [r["seconds"] for r in read_jsonl(tmp_path / "cut" / "history.jsonl")]
    assert secs == sorted(secs)  # the wall time continues across the resume


def test_finished_run_is_loaded_not_retrained(tmp_path: Path) -> None:
    g = _train(tmp_path, "regression", "r")
    stamp = (tmp_path / "r" / "generator.pt").stat().st_mtime_ns
    messages: list[str] = []
    again = train_gan(_cfg(), _data("regression"), "regression", 1, tmp_path / "r", CPU, seed=0,
                      log=messages.append)
    assert any("loading the finished generator" in m for m in messages)
    assert (tmp_path / "r" / "generator.pt").stat().st_mtime_ns == stamp
    ys = torch.tensor([-20.0, 0.0, 20.0])
    assert torch.equal(generate(g, ys, seed=0), generate(again, ys, seed=0))
    assert torch.equal(generate(load_generator(tmp_path / "r" / "generator.pt"), ys, seed=0),
                       generate(g, ys, seed=0))
    with pytest.raises(UserError) as e:
        train_gan(_cfg(steps=7), _data("regression"), "regression", 1, tmp_path / "r", CPU, seed=0)
    assert "steps=5" in str(e.value) and "\n" not in str(e.value)


def test_resume_from_another_run_is_one_user_error_line(tmp_path: Path) -> None:
    _train(tmp_path, "classification", "x", stop_after=2)
    with pytest.raises(UserError) as e:
        _train(tmp_path, "classification", "x", seed=5, resume=True)
    assert "seed" in str(e.value) and "\n" not in str(e.value)


def test_generate_does_not_depend_on_batch_size(tmp_path: Path) -> None:
    g = _train(tmp_path, "classification", "g", stop_after=2)
    labels = torch.arange(10) % 3
    a = generate(g, labels, seed=7, batch_size=3)
    assert a.shape == (10, 3, 8, 8)
    assert torch.allclose(a, generate(g, labels, seed=7, batch_size=256), atol=1e-6)


def test_minibatch_std_per_class_matches_torch_std() -> None:
    from xkd.gan.networks import minibatch_std

    h = torch.randn(6, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    out = minibatch_std(h, y)[:, 0, 0, 0]
    f = h.flatten(1)
    want = [f[:2].std(0, unbiased=False).mean()] * 2 + [f[2:5].std(0, unbiased=False).mean()] * 3 + [0.0]
    assert torch.allclose(out, torch.tensor(want), atol=1e-4)  # a class seen once gets 0
    assert torch.allclose(minibatch_std(h)[:, 0, 0, 0], f.std(0, unbiased=False).mean().expand(6), atol=1e-4)
