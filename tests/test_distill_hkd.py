"""HKD: kNN graph against brute force, the graph layer against its matrix formula, InfoNCE by hand,
memory-bank updates and negative sampling, the distiller's losses, bad inputs and a smoke run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, Subset

from tests.test_distill_toy import TinyNet
from tests.conftest import smoke_run_experiment
from xkd.data.tensors import TensorSplit
from xkd.distill import DistillContext, build_distiller, dataset_labels
from xkd.distill.hkd.graph import GraphConv, info_nce, knn_graph, normalized_adjacency
from xkd.distill.hkd.memory import MemoryBank, negative_scores, sample_negatives
from xkd.errors import UserError


def test_knn_graph_matches_brute_force():
    torch.manual_seed(0)
    z = torch.randn(10, 5) * 2
    k = 4
    adj = knn_graph(z, k)
    p = np.exp(z.double().numpy())
    p /= p.sum(1, keepdims=True)
    for i in range(10):
        dist = []
        for j in range(10):
            cos = sum(p[i, c] * p[j, c] for c in range(5)) / (math.sqrt((p[i] ** 2).sum()) * math.sqrt((p[j] ** 2).sum()))
            dist.append(-1.0 if i == j else 1.0 - cos)
        nearest = set(sorted(range(10), key=lambda j: dist[j])[:k])
        assert i in nearest
        assert set(torch.nonzero(adj[i]).flatten().tolist()) == nearest   # row i: what node i aggregates
    assert adj.sum(1).tolist() == [k] * 10                                # in-degree k everywhere
    assert torch.allclose(normalized_adjacency(adj), adj / k)             # so Â = A / k
    with pytest.raises(ValueError):
        knn_graph(z[:3], 4)


def test_graph_layer_matches_its_matrix_formula():
    torch.manual_seed(0)
    layer = GraphConv(3, 2)
    x = torch.randn(4, 3)
    a = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)
    xn, an = x.double().numpy(), a.double().numpy()
    deg = an.sum(1)
    a_hat = np.array([[an[i, j] / math.sqrt(deg[i] * deg[j]) for j in range(4)] for i in range(4)])
    w = layer.linear.weight.detach().double().numpy()
    b = layer.linear.bias.detach().double().numpy()
    expect = xn @ w[:, :3].T + (a_hat @ xn) @ w[:, 3:].T + b              # W [X, ÂX] + b
    assert np.allclose(layer(x, a).detach().double().numpy(), expect, atol=1e-6)


def test_info_nce_by_hand():
    # logits [1, 0, 0.5] / 0.5 = [2, 0, 1]: -log(e² / (e² + 1 + e))
    loss = info_nce(torch.tensor([1.0]), torch.tensor([[0.0, 0.5]]), 0.5)
    e = math.e
    assert loss.item() == pytest.approx(-math.log(e ** 2 / (e ** 2 + 1 + e)), rel=1e-6)
    two = info_nce(torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 0.5], [0.0, 0.0]]), 0.5)
    assert two.item() == pytest.approx((loss.item() + math.log(3)) / 2, rel=1e-6)   # batch mean


def test_memory_bank_init_and_momentum_update():
    torch.manual_seed(0)
    bank = MemoryBank(5, 12)
    stdv = 1 / math.sqrt(12 / 3)
    assert float(bank.student.abs().max()) <= stdv and float(bank.teacher.abs().max()) <= stdv
    bank.student[:, :] = 0
    bank.student[2, 0] = 1.0
    before_t = bank.teacher.clone()
    e = torch.zeros(1, 12)
    e[0, 1] = 1.0
    bank.update(torch.tensor([2]), e, e)
    norm = math.sqrt(0.9 ** 2 + 0.1 ** 2)                                 # N(0.9·[1,0] + 0.1·[0,1])
    assert bank.student[2, :2].tolist() == pytest.approx([0.9 / norm, 0.1 / norm])
    assert float(bank.student[[0, 1, 3, 4]].abs().sum()) == 0            # other rows untouched
    assert torch.equal(bank.teacher[[0, 1, 3, 4]], before_t[[0, 1, 3, 4]])
    assert bank.teacher[2].norm().item() == pytest.approx(1.0)


def test_negative_sampling_never_draws_the_anchor_class():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    anchors = torch.tensor([0, 1, 2, 0])
    g = torch.Generator().manual_seed(0)
    neg = sample_negatives(labels, anchors, 5, generator=g)               # pools 7, 7, 6, 7 >= 5
    assert neg.shape == (4, 5)
    for row, a in zip(neg, anchors):
        assert (labels[row] != a).all()
        assert len(set(row.tolist())) == 5                                # no replacement needed
    many = sample_negatives(labels, torch.tensor([2]), 40, generator=g)   # pool 6 < 40: replacement
    assert (labels[many[0]] != 2).all() and set(many[0].tolist()) == {0, 1, 2, 3, 4, 9}
    with pytest.raises(UserError, match="other classes"):
        sample_negatives(torch.zeros(4, dtype=torch.long), torch.tensor([0]), 2)


def test_negative_scores_both_paths_agree():
    torch.manual_seed(0)
    bank, anchor = torch.randn(6, 4), torch.randn(3, 4)
    few = torch.randint(0, 6, (3, 2))
    many = torch.randint(0, 6, (3, 8))
    for neg in (few, many):
        expect = torch.stack([torch.stack([anchor[b] @ bank[n] for n in neg[b]]) for b in range(3)])
        assert torch.allclose(negative_scores(anchor, bank, neg), expect, atol=1e-6)


def _ctx(n=24, classes=5, labels=None, path="students[1]"):
    labels = torch.arange(n) % classes if labels is None else labels
    return DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=classes, dataset_size=n,
                          extras={"labels": labels, "path": path})


def _batch(idx, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(len(idx), 3, 16, 16, generator=g),
            "label": torch.as_tensor(idx) % classes, "index": torch.as_tensor(idx)}


def test_distiller_losses_banks_and_gradients():
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet((8, 16, 48))
    d = build_distiller("hkd", student, teacher, {"k": 3, "nce_k": 10, "feat_dim": 6}, _ctx())
    assert d.embed_t.linear.in_features == 48 and d.embed_s.linear.in_features == 32
    d.eval()
    b = _batch(list(range(8)))
    before = {k: v.clone() for k, v in d.memory.state_dict().items()}
    out = d(b, 0)
    assert set(out.losses) == {"ce", "kd", "hkd"} and out.logs["hkd_graph"] == 1.0
    z_s, z_t = student(b["image"]), teacher(b["image"])
    assert out.losses["ce"].item() == pytest.approx(torch.nn.functional.cross_entropy(z_s, b["label"]).item(), rel=1e-5)
    for name, bank in d.memory.state_dict().items():                      # only batch rows moved
        assert not torch.equal(bank[:8], before[name][:8]) and torch.equal(bank[8:], before[name][8:])
        assert torch.allclose(bank[:8].norm(dim=1), torch.ones(8), atol=1e-5)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())               # teacher frozen
    for m in (d.embed_s, d.embed_t, d.gnn_s, d.gnn_t, student):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    # the four InfoNCE terms, recomposed from the parts with the same negatives (same RNG draw)
    d.memory.load_state_dict(before)
    torch.manual_seed(7)
    out2 = d(b, 0)
    torch.manual_seed(7)
    neg = sample_negatives(torch.arange(24) % 5, b["label"], 10)
    with torch.no_grad():
        e_s, e_t = d.embed_s(student.features(b["image"]).pooled), d.embed_t(teacher.features(b["image"]).pooled)
        m_s, m_t = before["student"], before["teacher"]
        def nce(a, pos, bank):
            rows = [torch.cat([(a[i] * pos[i]).sum()[None], torch.stack([a[i] @ bank[n] for n in neg[i]])])
                    for i in range(len(a))]
            return torch.stack([-torch.log_softmax(r / 0.07, 0)[0] for r in rows]).mean()
        z_s, z_t = student(b["image"]), teacher(b["image"])
        g_s = torch.nn.functional.normalize(d.gnn_s(e_s, knn_graph(z_s, 3)), dim=1)
        g_t = torch.nn.functional.normalize(d.gnn_t(e_t, knn_graph(z_t, 3)), dim=1)
        q_t = torch.nn.functional.normalize(0.75 * m_t[:8] + 0.25 * g_t, dim=1)
        q_s = torch.nn.functional.normalize(0.75 * m_s[:8] + 0.25 * g_s, dim=1)
        total = (nce(e_s, m_t[:8], m_s) + nce(e_t, m_s[:8], m_t) + nce(g_s, q_t, m_s) + nce(g_t, q_s, m_t))
    assert out2.losses["hkd"].item() == pytest.approx(3 * total.item(), rel=1e-4)
    alone = build_distiller("hkd", TinyNet(), TinyNet(), {"kd_weight": 0.0, "k": 3}, _ctx())
    assert set(alone(b, 0).losses) == {"ce", "hkd"}


def test_bad_inputs():
    s, t = TinyNet(), TinyNet()
    d = build_distiller("hkd", s, t, {}, _ctx())                          # k = 8
    with pytest.raises(UserError, match=r"batch of 4 samples is smaller than params.k = 8"):
        d(_batch([0, 1, 2, 3]), 0)
    assert d(_batch(list(range(10))), 0).logs["hkd_graph"] == 1.0
    assert d(_batch([10, 11, 12]), 0).logs["hkd_graph"] == 0.0           # a trailing batch: skipped
    b = _batch(list(range(10)))
    del b["index"]
    with pytest.raises(UserError, match="no 'index'"):
        d(b, 0)
    with pytest.raises(UserError, match="outside the memory banks"):
        d(_batch(list(range(20, 30))), 0)
    with pytest.raises(UserError, match=r"students\[1\]: hkd .* needs the label of every training sample"):
        build_distiller("hkd", s, t, {}, DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5,
                                                       dataset_size=24, extras={"path": "students[1]"}))
    with pytest.raises(UserError, match="training-set size"):
        build_distiller("hkd", s, t, {}, DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5))


class _Plain(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return {"image": torch.zeros(1), "label": torch.tensor(2 - i)}


class _NoLabel(_Plain):
    def __getitem__(self, i):
        return {"image": torch.zeros(1)}


def test_dataset_labels():
    split = TensorSplit(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([3, 1, 2, 0]), (0.5,), (0.5,))
    assert dataset_labels(split).tolist() == [3, 1, 2, 0]
    assert dataset_labels(Subset(split, range(2))).tolist() == [3, 1]
    assert dataset_labels(_Plain()).tolist() == [2, 1, 0]
    assert dataset_labels(_NoLabel()) is None


def test_smoke_run_of_the_experiment_file(tmp_path):
    smoke_run_experiment("hkd.yaml", tmp_path / "run")
    assert (tmp_path / "run" / "seed-0" / "explanations" / "student_hkd.npz").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hkd.yaml", "hkd_digits.yaml"])
def test_full_file_smoke_runs(tmp_path, name):
    smoke_run_experiment(name, tmp_path / "run", [])
