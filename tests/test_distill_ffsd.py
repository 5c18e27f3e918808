"""FFSD: hand-computed losses and targets, module shapes for two architectures, the warm-up curve,
gradient isolation (what makes one backward equal the reference's per-network updates), the
optimiser split, errors and a fast smoke run of the experiment file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import smoke_run_experiment
from tests.test_distill_toy import FlatNet, TinyNet
from xkd.config import ModelConfig, OptimizerConfig, ScheduleConfig
from xkd.distill import DistillContext, build_distiller
from xkd.distill.ffsd.modules import (attention, attention_distance, diversity_loss, diversity_target,
                                      shifted_feature, warmup_weight)
from xkd.engine.optim import build_extra_optimizers, build_optimizer
from xkd.errors import ConfigError, UserError
from xkd.models import build as build_model
from xkd.models.base import describe


def _ctx(size=16, classes=4, path="students[0]"):
    return DistillContext(example=torch.randn(1, 3, size, size), num_classes=classes,
                          extras={"path": path})


def _batch(b=6, size=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, size, size, generator=g),
            "label": torch.randint(0, classes, (b,), generator=g)}


def test_attention_and_distance_by_hand():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])           # (1,2,1,2)
    assert attention(f).flatten().tolist() == [5.0, 2.0]       # mean_c F²: (1+9)/2, (4+0)/2
    p, q = torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]])
    # N(P) = (0.6, 0.8), N(Q) = (1, 0): ((0.6-1)² + 0.8²) / 2 = 0.4
    assert attention_distance(p, q).item() == pytest.approx(0.4)


def test_diversity_target_loss_and_shift_by_hand():
    y = torch.tensor([[[[3.0, 4.0, 0.0]]]])                    # attention (1,1,1,3): n = 5
    t, yhat, n = diversity_target(y)
    assert n.item() == pytest.approx(5.0)
    assert yhat.flatten().tolist() == pytest.approx([0.6, 0.8, 0.0])
    # HW = 3 -> τ = the 1st smallest = 0: above τ -> n - ŷ, equal -> n/2
    assert t.flatten().tolist() == pytest.approx([4.4, 4.2, 2.5])
    x = torch.tensor([[[[0.0, 0.0, 2.0]]]])                    # unit map (0, 0, 1)
    assert diversity_loss(x, t).item() == pytest.approx((4.4 ** 2 + 4.2 ** 2 + 1.5 ** 2) / 3)
    prev = torch.zeros(1, 2, 1, 3)
    shifted = shifted_feature(prev, t, yhat, n)                # + (t - ŷ)·n / C on every channel
    assert shifted[0, 0, 0].tolist() == pytest.approx([9.5, 8.5, 6.25])
    assert torch.equal(shifted[0, 0], shifted[0, 1])
    # weakest third kept, the rest inverted: a 6-pixel map has τ = its 2nd smallest value
    t6, yh6, n6 = diversity_target(torch.arange(1.0, 7.0).view(1, 1, 2, 3))
    assert t6[0, 0].item() == pytest.approx(yh6[0, 0].item())
    assert t6[0, 1].item() == pytest.approx(n6.item() / 2)
    assert t6[0, 2:].tolist() == pytest.approx((n6 - yh6)[0, 2:].tolist())


def test_warmup_curve():
    lam = 10.0
    vals = [warmup_weight(lam, e, 5) for e in range(1, 8)]
    assert vals[0] == pytest.approx(lam * math.exp(-5 * 0.8 ** 2))   # e = 1
    assert vals[2] == pytest.approx(lam * math.exp(-5 * 0.4 ** 2))   # e = 3
    assert vals[4:] == pytest.approx([lam] * 3)                      # e >= 5
    assert all(a < b for a, b in zip(vals[:4], vals[1:5]))
    assert warmup_weight(lam, 1, 0) == lam
    d = build_distiller("ffsd", TinyNet(num_classes=4), None, {"warmup_epochs": 5}, _ctx())
    # the engine's epoch is 0-indexed: epoch 0 is the reference's epoch 1
    assert d.weights(0) == pytest.approx((1e-5 * math.exp(-3.2), 10 * math.exp(-3.2), 1000 * math.exp(-3.2)))
    assert d.weights(4) == pytest.approx((1e-5, 10.0, 1000.0))


@pytest.mark.parametrize("arch,size,m", [("resnet8", 16, 2), ("mobilenetv2", 16, 3), ("tiny", 18, 2)])
def test_module_shapes(arch, size, m):
    student = (TinyNet(num_classes=4) if arch == "tiny" else
               build_model(ModelConfig(name=arch), num_classes=4, in_channels=3, image_size=size, path="x"))
    d = build_distiller("ffsd", student, None, {"num_common": m}, _ctx(size))
    stages, _ = describe(student, torch.randn(1, 3, size, size))
    c = stages[-1].channels
    x = torch.randn(5, 3, size, size)
    feats = [net.features(x) for net in d.commons]
    assert len(d.commons) == m and len(d.sd_common) == m - 1
    fused, z = d.fusion(torch.cat([f.stages[-1] for f in feats], 1))
    assert fused.shape == (5, c, stages[-1].height, stages[-1].width) and z.shape == (5, 4)
    assert d.trans_fusion(feats[0].stages[-1]).shape == (5, m * c, stages[-1].height, stages[-1].width)
    for sd in [d.sd_leader, *d.sd_common]:
        outs = sd(fused)
        assert [tuple(o.shape[1:]) for o in outs] == [(s.channels, s.height, s.width) for s in stages[:-1]]
    out = d(_batch(size=size), 0)
    assert out.logits.shape == (6, 4) and {f"acc_common{k}" for k in range(m)} <= set(out.logs)
    att = d.attention_maps(x)
    assert [tuple(a.shape) for a in att.values()] == [(5, 2, s.height, s.width) for s in stages]
    assert all(0 <= float(a.min()) and float(a.max()) <= 1 + 1e-6 for a in att.values())


def test_common_students_are_fresh_copies_and_the_leader_is_the_student():
    torch.manual_seed(0)
    student = TinyNet(num_classes=4)
    d = build_distiller("ffsd", student, TinyNet(num_classes=4), {}, _ctx())
    assert d.student is student and d.teacher is None          # online: a given teacher is ignored
    names = [n for n, _ in student.named_parameters()]
    for net in d.commons:
        assert [n for n, _ in net.named_parameters()] == names
        assert not torch.equal(net.bodies[0][0].weight, student.bodies[0][0].weight)
    assert not torch.equal(d.commons[0].bodies[0][0].weight, d.commons[1].bodies[0][0].weight)


def test_losses_by_hand_and_gradients_reach_only_their_owners():
    torch.manual_seed(1)
    d = build_distiller("ffsd", TinyNet(num_classes=4), None, {"T": 3.0, "warmup_epochs": 0}, _ctx())
    b = _batch()
    out = d(b, 0)
    # mutual KD with m = 2: T²·[KL(p1 ‖ p0) + KL(p0 ‖ p1)] / (m - 1), batchmean, peers fixed
    with torch.no_grad():
        z = [net(b["image"]).double().numpy() for net in d.commons]
    def logp(a):
        a = a / 3.0
        return a - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True)) - a.max(1, keepdims=True)
    kl = lambda p_log, q_log: float((np.exp(p_log) * (p_log - q_log)).sum(1).mean())
    expect = 9.0 * (kl(logp(z[1]), logp(z[0])) + kl(logp(z[0]), logp(z[1])))
    assert out.losses["common_kd"].item() == pytest.approx(expect, rel=1e-4)
    owners = {"commons": list(d.commons.parameters()), "fusion": list(d.fusion.parameters()),
              "leader": list(d.student.parameters()) + list(d.trans_fusion.parameters()),
              "sd": list(d.sd_common.parameters()) + list(d.sd_leader.parameters())}
    loss_owner = {"common_ce": "commons", "common_kd": "commons", "common_div": "commons",
                  "fusion_ce": "fusion", "fusion_kd": "fusion", "ce": "leader", "kd": "leader",
                  "leader_fusion": "leader", "leader_trans": "leader", "leader_sd": "leader",
                  "sd": "sd"}
    assert set(out.losses) == set(loss_owner)
    for name, loss in out.losses.items():
        for group, params in owners.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            reached = any(g is not None and bool(g.abs().sum() > 0) for g in grads)
            assert reached == (group == loss_owner[name]), (name, group)


def test_optimisers_split_as_in_the_reference():
    d = build_distiller("ffsd", TinyNet(num_classes=4), None, {"sd_weight_decay": 1e-4}, _ctx())
    main = build_optimizer(d, OptimizerConfig(name="sgd", lr=0.1, weight_decay=5e-4))
    wd = {id(p): g["weight_decay"] for g in main.param_groups for p in g["params"]}
    assert all(wd[id(p)] == 1e-5 for p in d.fusion.parameters())
    assert all(wd[id(p)] == 5e-4 for p in d.commons.parameters())
    assert all(wd[id(p)] == 5e-4 for p in d.student.parameters())
    sd_ids = {id(p) for m in (d.sd_common, d.sd_leader) for p in m.parameters()}
    assert not sd_ids & set(wd)
    (extra,) = build_extra_optimizers(d, OptimizerConfig(name="sgd", lr=0.1), ScheduleConfig(), 2, 3)
    g = extra.optimizer.param_groups[0]
    assert type(extra.optimizer) is torch.optim.Adam and g["lr"] == pytest.approx(1e-3)
    assert g["weight_decay"] == 1e-4 and {id(p) for p in g["params"]} == sd_ids


def test_bad_inputs():
    with pytest.raises(ConfigError, match=r"students\[2\]\.params\.num_common"):
        build_distiller("ffsd", TinyNet(num_classes=4), None, {"num_common": 1}, _ctx(path="students[2]"))
    with pytest.raises(UserError, match="spatial stages"):
        build_distiller("ffsd", FlatNet(), None, {}, _ctx())
    with pytest.raises(UserError, match="classification"):
        build_distiller("ffsd", TinyNet(num_classes=1), None, {},
                        DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=1, task="regression"))


def test_config_names_num_common(write_experiment):
    from xkd.pipeline.checks import load
    from tests.conftest import tiny_experiment

    exp = tiny_experiment(students=[{"name": "f", "method": "ffsd", "model": {"name": "resnet8"},
                                     "params": {"num_common": 1}}])
    with pytest.raises(ConfigError, match=r"students\[0\]\.params\.num_common"):
        load(write_experiment(exp))


def test_smoke_run_of_the_experiment_file(tmp_path):
    run = smoke_run_experiment("ffsd.yaml", tmp_path / "run")
    rows = (run / "students" / "ffsd" / "history.jsonl").read_text()
    assert '"acc_fusion"' in rows and '"acc_common1"' in rows
    import json
    index = json.loads((run / "explanations" / "index.json").read_text())
    assert set(index["models"]["ffsd"]["attention"]) == {"stage0", "stage1", "stage2"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ffsd.yaml", "ffsd_digits.yaml"])
def test_full_file_smoke_runs(tmp_path, name):
    smoke_run_experiment(name, tmp_path / "run", [])


def test_a_warmup_longer_than_the_schedule_warns_once_with_the_reached_factor(capsys):
    """warm-up 5 with 4 epochs: every λ peaks at exp(-5 (1 - 4/5)²) = 0.819 in the last epoch."""
    import math

    from xkd.distill.ffsd.modules import warmup_weight

    student = build_model("resnet8", num_classes=4, in_channels=3, image_size=16)
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=4, epochs=4,
                         extras={"path": "students[3]"})
    build_distiller("ffsd", student, None, {"warmup_epochs": 5}, ctx)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    peak = warmup_weight(1.0, 4, 5)
    assert peak == pytest.approx(math.exp(-5 * 0.2 ** 2))
    assert len(lines) == 1 and "students[3].params.warmup_epochs" in lines[0] and f"{peak:.2f}" in lines[0]
    ctx.epochs = 5  # reaches full weight in the last epoch: no word
    build_distiller("ffsd", build_model("resnet8", num_classes=4, in_channels=3, image_size=16), None,
                    {"warmup_epochs": 5}, ctx)
    assert not [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
