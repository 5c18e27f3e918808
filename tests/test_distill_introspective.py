"""Introspective learning: explained classes, similarities and soft targets by hand; targets carry
no gradient and match explanations computed with xkd.explain directly; the loss by hand; refresh
caching; bad inputs (one line) and a smoke run of the experiment file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.test_distill_toy import FlatNet, TinyNet
from tests.conftest import smoke_run_experiment
from xkd.distill import DistillContext, build_distiller
from xkd.distill.introspective import class_similarities, explained_classes, soft_targets
from xkd.errors import ConfigError, UserError
from xkd.explain import build as build_explainer


def _ctx(n=0, classes=5, task="classification", path="students[2]"):
    return DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=classes, task=task,
                          dataset_size=n, extras={"path": path})


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, 16, 16, generator=g), "label": torch.randint(0, 5, (b,), generator=g),
            "index": torch.arange(b)}


def test_explained_classes_label_first_then_most_probable():
    z = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 1.0, 2.0]])
    y = torch.tensor([0, 0])
    assert explained_classes(z, y, 2).tolist() == [[0, 1, 2], [0, 3, 2]]    # label never repeated
    assert explained_classes(z, y, None).tolist() == [[0, 1, 2, 3], [0, 3, 2, 1]]
    assert explained_classes(z, y, 10).shape == (2, 4)                      # clamped to C - 1


def test_similarities_and_soft_targets_by_hand():
    maps = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]])            # (1,S=3,2): E_y first
    assert class_similarities(maps, "cosine")[0].tolist() == pytest.approx([1.0, 1 / math.sqrt(2), 0.0])
    assert class_similarities(maps, "neg_rmse")[0].tolist() == pytest.approx(
        [0.0, -math.sqrt(0.5), -1.0])
    q = soft_targets(torch.tensor([[1.0, 0.0]]), torch.tensor([[2, 0]]), 3, 1.0)
    e = math.e
    assert q[0].tolist() == pytest.approx([1 / (e + 1), 0.0, e / (e + 1)])   # unexplained class: 0
    assert q.sum().item() == pytest.approx(1.0)


def test_targets_sum_to_one_carry_no_gradient_and_follow_xkd_explain():
    torch.manual_seed(0)
    net = TinyNet()
    d = build_distiller("introspective", net, None, {"top_k": 2, "target_temperature": 0.5}, _ctx())
    b = _batch()
    logits = net(b["image"])
    q = d.explain_targets(b["image"], logits, b["label"])
    assert q.shape == (4, 5) and not q.requires_grad and q.grad_fn is None
    assert torch.allclose(q.sum(1), torch.ones(4))
    assert int((q > 0).sum(1).max()) <= 3                                   # label + 2 classes
    # the same targets from Captum Grad-CAM via xkd.explain, with the formula written out
    ex = build_explainer("gradcam", net)
    cls = explained_classes(logits, b["label"], 2)
    maps = [ex.explain(b["image"], cls[:, j]).flatten(1).double().numpy() for j in range(3)]
    for i in range(4):
        sims = [float(maps[0][i] @ m[i] / max(np.linalg.norm(maps[0][i]) * np.linalg.norm(m[i]), 1e-8))
                for m in maps]
        w = np.exp(np.array(sims) / 0.5)
        expect = np.zeros(5)
        expect[cls[i].numpy()] = w / w.sum()
        assert np.allclose(q[i].double().numpy(), expect, atol=1e-5)


def test_loss_by_hand_and_gradient_only_through_logits():
    torch.manual_seed(1)
    net = TinyNet()
    d = build_distiller("introspective", net, None, {"T": 2.0, "alpha": 0.5, "ce_weight": 0.7}, _ctx())
    d.eval()                                                                # BN fixed: same logits twice
    b = _batch()
    out = d(b, 0)
    logits = net(b["image"]).detach()
    q = d.explain_targets(b["image"], logits, b["label"]).double().numpy()
    z = logits.double().numpy()
    log_p = z / 2 - np.log(np.exp(z / 2).sum(1, keepdims=True))
    kl = np.mean([sum(q[i, c] * (math.log(q[i, c]) - log_p[i, c]) for c in range(5) if q[i, c] > 0)
                  for i in range(4)])
    ce = -np.mean(z[np.arange(4), b["label"].numpy()] - np.log(np.exp(z).sum(1)))
    assert out.losses["introspect"].item() == pytest.approx(0.5 * 4 * kl, rel=1e-4)
    assert out.losses["ce"].item() == pytest.approx(0.7 * ce, rel=1e-5)
    assert 0 < out.logs["q_label"] <= 1
    out.losses["introspect"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_refresh_every_reuses_targets_per_sample():
    torch.manual_seed(0)
    d = build_distiller("introspective", TinyNet(), None, {"refresh_every": 2}, _ctx(n=8))
    calls = []
    real = d.explainer.explain
    d.explainer.explain = lambda x, t: calls.append(len(x)) or real(x, t)
    b = _batch()
    d(b, 0)
    assert calls == [4] * 5                                                  # label + 4 other classes
    d(b, 1)
    assert len(calls) == 5                                                   # epoch 1: still fresh
    b2 = {**b, "index": torch.tensor([0, 1, 6, 7])}
    d(b2, 1)
    assert calls[5:] == [2] * 5                                              # only the unseen two
    d(b, 2)
    assert calls[10:] == [4] * 5                                             # two epochs later: redone
    assert d.cache is not None and torch.allclose(d.cache.q[:4].sum(1), torch.ones(4))
    with pytest.raises(UserError, match="refresh_every"):
        build_distiller("introspective", TinyNet(), None, {"refresh_every": 2}, _ctx(n=0))


def test_bad_inputs_are_one_line():
    with pytest.raises(ConfigError) as e:
        build_distiller("introspective", FlatNet(), None, {}, _ctx())
    assert str(e.value).startswith("students[2].params.explainer.params.layer") and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        build_distiller("introspective", TinyNet(), None, {"explainer": {"params": {"layer": "nope"}}}, _ctx())
    assert "unknown layer 'nope'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="classification"):
        build_distiller("introspective", TinyNet(num_classes=1), None, {}, _ctx(classes=1, task="regression"))
    d = build_distiller("introspective", TinyNet(), TinyNet(), {}, _ctx())
    assert d.teacher is None                                                 # teacher-free


def test_smoke_run_of_the_experiment_file(tmp_path):
    smoke_run_experiment("introspective.yaml", tmp_path / "run")
    assert (tmp_path / "run" / "seed-0" / "explanations" / "student_introspective.npz").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["introspective.yaml", "introspective_digits.yaml"])
def test_full_file_smoke_runs(tmp_path, name):
    smoke_run_experiment(name, tmp_path / "run", [])
