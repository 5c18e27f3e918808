"""ReviewKD and e2KD on the real backbones of xkd.models (CIFAR ResNets, a torchvision adapter)."""

from __future__ import annotations

import pytest
import torch

from xkd.distill import DistillContext, build_distiller
from xkd.losses import hcl
from xkd.models import build as build_model


def _ctx():
    return DistillContext(example=torch.randn(1, 3, 32, 32), num_classes=10)


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, 32, 32, generator=g),
            "label": torch.randint(0, 10, (b,), generator=g)}


def test_reviewkd_resnet8_from_resnet20_matches_the_paper_layout():
    torch.manual_seed(0)
    teacher, student = build_model("resnet20", 10), build_model("resnet8", 10)
    d = build_distiller("reviewkd", student, teacher, {}, _ctx())
    # notes 1.6 (resnet20 <- resnet56 row, same widths): 16, 32, 64, 64; 32, 16, 8, 1; mid 64
    assert [a.lateral[0].in_channels for a in d.abfs] == [16, 32, 64, 64]
    assert [a.output[0].out_channels for a in d.abfs] == [16, 32, 64, 64]
    assert [a.out_size for a in d.abfs] == [(32, 32), (16, 16), (8, 8), (1, 1)]
    assert all(a.lateral[0].out_channels == 64 for a in d.abfs)
    d.eval()
    b = _batch()
    got = d(b, 40).losses["review"]
    sf, tf = student.features(b["image"]), teacher.features(b["image"])
    assert all(torch.equal(torch.relu(p), s) for p, s in zip(tf.preact, tf.stages))
    assert any((p < 0).any() for p in tf.preact)  # pre-ReLU teacher taps differ from the stages
    outs, _ = d.abfs(sf.stages + [sf.pooled[:, :, None, None]])
    ref = sum(hcl(u, t) for u, t in zip(outs, tf.preact + [tf.pooled[:, :, None, None]]))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    d.train()
    out = d(b, 40)
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    att = d.attention_maps(b["image"])
    assert {k: tuple(v.shape[1:]) for k, v in att.items()} == {
        "stage0": (2, 32, 32), "stage1": (2, 16, 16), "stage2": (2, 8, 8)}


def test_reviewkd_tv_resnet18_teacher_to_resnet8_student_on_32px():
    torch.manual_seed(0)
    teacher, student = build_model("tv:resnet18", 10), build_model("resnet8", 10)
    t_shapes = [tuple(s.shape[1:]) for s in teacher.features(torch.zeros(2, 3, 32, 32)).stages]
    d = build_distiller("reviewkd", student, teacher, {"saliency_mix": 0.5,
                                                       "saliency_levels": "per_stage"}, _ctx())
    # student 3 stages (32/16/8) paired with the teacher's deepest 3 stages
    assert [a.out_size for a in d.abfs][:-1] == [s[1:] for s in t_shapes[-3:]]
    assert [a.output[0].out_channels for a in d.abfs] == [s[0] for s in t_shapes[-3:]] + [512]
    d.train()
    b = _batch()
    out = d(b, 40)
    sum(out.losses.values()).backward()
    assert torch.isfinite(out.losses["review"]) and out.losses["review"].item() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_e2kd_resnet8_from_resnet20():
    torch.manual_seed(0)
    teacher, student = build_model("resnet20", 10), build_model("resnet8", 10)
    d = build_distiller("e2kd", student, teacher, {}, _ctx()).train()
    out = d(_batch(), 0)
    grads = torch.autograd.grad(out.losses["exp"], list(student.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
