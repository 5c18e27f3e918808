"""ReviewKD: ABF structure, chain order, taps, warm-up, frozen teacher, mismatched pairs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.test_distill_toy import FlatNet, TinyNet
from xkd.distill import DistillContext, build_distiller
from xkd.distill.reviewkd.abf import ABF
from xkd.losses import hcl
from xkd.errors import ConfigError, UserError


def _ctx(size=16, epochs=1):
    return DistillContext(example=torch.randn(1, 3, size, size), num_classes=5, epochs=epochs)


def _batch(b=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, size, size, generator=g),
            "label": torch.randint(0, 5, (b,), generator=g)}


def test_abf_structure_and_nearest_fusion():
    torch.manual_seed(0)
    abf = ABF(in_ch=6, mid_ch=4, out_ch=10, fuse=True, out_size=(8, 8))
    convs = [m for m in abf.modules() if isinstance(m, nn.Conv2d)]
    shapes = [(tuple(c.weight.shape), c.bias is not None) for c in convs]
    assert shapes == [((4, 6, 1, 1), False), ((2, 8, 1, 1), True), ((10, 4, 3, 3), False)]
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.LeakyReLU)) for m in abf.modules())
    assert isinstance(abf.attention[1], nn.Sigmoid)
    # Kaiming-uniform a=1: bound = sqrt(6 / ((1 + a^2) fan_in)) = sqrt(3 / fan_in)
    assert abf.lateral[0].weight.abs().max() <= (3 / 6) ** 0.5
    assert abf.output[0].weight.abs().max() <= (3 / 36) ** 0.5
    abf.eval()
    x, r = torch.randn(2, 6, 8, 8), torch.randn(2, 4, 4, 4)
    out, fused, att = abf(x, r)
    # independent reference: nearest upsampling x2 by repetition, then the two sigmoid maps
    lat = abf.lateral(x)
    r_up = r.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    a = torch.sigmoid(abf.attention[0](torch.cat([lat, r_up], 1)))
    assert att.shape == (2, 2, 8, 8) and torch.allclose(att, a)
    assert torch.allclose(fused, lat * a[:, :1] + r_up * a[:, 1:])
    assert torch.allclose(out, abf.output(fused)) and out.shape == (2, 10, 8, 8)
    assert (out < 0).any()  # no output activation


def test_abf_upsamples_to_larger_teacher_before_output_conv():
    torch.manual_seed(0)
    abf = ABF(3, 4, 5, fuse=False, out_size=(8, 8)).eval()
    x = torch.randn(1, 3, 4, 4)
    out, fused, att = abf(x)
    assert att is None and fused.shape[-2:] == (8, 8)
    lat = abf.lateral(x)
    assert torch.allclose(fused, lat.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.allclose(out, abf.output(fused))


def test_chain_runs_deep_to_shallow_from_pooled_vector():
    teacher, student = TinyNet((8, 16, 32)), TinyNet((4, 8, 12))
    d = build_distiller("reviewkd", student, teacher, {}, _ctx())
    abfs = list(d.extra_modules()[0])
    assert d.extra_modules()[0] is d.abfs and len(abfs) == 4
    assert [a.fuse for a in abfs] == [True, True, True, False]
    assert abfs[-1].lateral[0].in_channels == 12 and abfs[-1].out_size == (1, 1)
    assert [a.lateral[0].in_channels for a in abfs] == [4, 8, 12, 12]
    assert [a.output[0].out_channels for a in abfs] == [8, 16, 32, 32]
    assert all(a.lateral[0].out_channels == 12 for a in abfs)  # mid = min(512, pooled width)
    # the deepest spatial level fuses with the pooled residual broadcast to its size
    seen = {}

    def hook(_m, inputs, _o):
        seen["res"] = inputs[1]

    abfs[2].register_forward_hook(hook)
    d.eval()
    d(_batch(), 0)
    assert seen["res"].shape[-2:] == (1, 1)


def test_review_loss_uses_teacher_preact_and_student_postact():
    torch.manual_seed(0)
    teacher, student = TinyNet((8, 16, 32)), TinyNet((4, 8, 12))
    official = _ctx(epochs=240)  # the official CIFAR-100 schedule: default warm-up 20 epochs
    d = build_distiller("reviewkd", student, teacher, {"review_weight": 3.0}, official).eval()
    b = _batch()
    got = d(b, 10).losses["review"]
    sf, tf = student.features(b["image"]), teacher.features(b["image"])
    outs, _ = d.abfs(sf.stages + [sf.pooled[:, :, None, None]])
    ref = sum(hcl(u, t) for u, t in zip(outs, tf.preact + [tf.pooled[:, :, None, None]]))
    assert got.item() == pytest.approx(3.0 * 0.5 * ref.item(), rel=1e-5)  # warm-up 10/20
    dp = build_distiller("reviewkd", student, teacher, {"student_preact": True}, official).eval()
    dp.abfs.load_state_dict(d.abfs.state_dict())
    outs_p, _ = dp.abfs(sf.preact + [sf.pooled[:, :, None, None]])
    ref_p = sum(hcl(u, t) for u, t in zip(outs_p, tf.preact + [tf.pooled[:, :, None, None]]))
    assert dp(b, 20).losses["review"].item() == pytest.approx(ref_p.item(), rel=1e-5)


def test_warmup_zero_at_first_epoch_and_frozen_teacher():
    torch.manual_seed(0)
    teacher, student = TinyNet((8, 16, 32)), TinyNet((4, 8, 12))
    d = build_distiller("reviewkd", student, teacher, {"kd_weight": 0.5}, _ctx())
    d.train()
    assert not teacher.training and student.training
    out = d(_batch(), 0)
    assert out.losses["review"].item() == 0.0 and out.logs["review_warmup"] == 0.0
    assert set(out.losses) == {"ce", "review", "kd"}
    sum(out.losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    assert not teacher.training
    assert "teacher" not in dict(d.named_modules()) and not any(
        n.startswith("teacher") for n in d.state_dict())


@pytest.mark.parametrize("s_strides,t_strides,s_size", [
    ((2, 2, 2), (1, 2, 2), (8, 4, 2)),    # student 8/4/2 vs teacher 16/8/4: upsample
    ((1, 2, 2), (2, 2, 2), (16, 8, 4)),   # student larger than teacher: pooled output
])
def test_mismatched_channels_and_spatial_sizes(s_strides, t_strides, s_size):
    torch.manual_seed(0)
    teacher = TinyNet((8, 16, 32), strides=t_strides)
    student = TinyNet((6, 10, 20), strides=s_strides)
    d = build_distiller("reviewkd", student, teacher, {}, _ctx()).train()
    b = _batch()
    tf = teacher.features(b["image"])
    outs, _ = d.abfs(d._student_taps(student.features(b["image"])))
    assert [o.shape for o in outs] == [t.shape for t in tf.preact] + [(4, 32, 1, 1)]
    out = d(b, 20)
    sum(out.losses.values()).backward()
    assert torch.isfinite(out.losses["review"])
    att = d.attention_maps(b["image"])
    assert {k: tuple(v.shape) for k, v in att.items()} == {
        f"stage{j}": (4, 2, s, s) for j, s in enumerate(s_size)}
    assert all(((v > 0) & (v < 1)).all() for v in att.values())
    assert d.training  # mode restored after the export


def test_different_stage_counts_pair_deepest_stages():
    torch.manual_seed(0)
    teacher = TinyNet((8, 16, 32), strides=(1, 2, 2))
    student = TinyNet((6, 12), strides=(2, 2))
    d = build_distiller("reviewkd", student, teacher, {}, _ctx())
    assert d.teacher_stage_ids == [1, 2] and d.student_stage_ids == [0, 1]
    assert [a.output[0].out_channels for a in d.abfs] == [16, 32, 32]
    assert set(d.attention_maps(_batch()["image"])) == {"stage0", "stage1"}
    out = d(_batch(), 20)
    assert torch.isfinite(out.losses["review"])


def test_pair_without_spatial_stages_is_a_user_error():
    with pytest.raises(UserError, match="spatial stage"):
        build_distiller("reviewkd", FlatNet(), TinyNet(), {}, _ctx())
    with pytest.raises(UserError, match="spatial stage"):
        build_distiller("reviewkd", TinyNet(), FlatNet(), {}, _ctx())


def test_params_are_validated_with_paths():
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, extras={"path": "students[2]"})
    with pytest.raises(ConfigError, match=r"students\[2\]\.params\.saliency_mix"):
        build_distiller("reviewkd", TinyNet(), TinyNet(), {"saliency_mix": 1.5}, ctx)
    with pytest.raises(ConfigError, match=r"students\[2\]\.params\.lamda"):
        build_distiller("reviewkd", TinyNet(), TinyNet(), {"lamda": 1.0}, ctx)
    with pytest.raises(UserError, match="needs a teacher"):
        build_distiller("reviewkd", TinyNet(), None, {}, ctx)
    with pytest.raises(UserError, match="unknown method"):
        build_distiller("reviewKD", TinyNet(), TinyNet(), {}, ctx)


def _warn_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def test_a_warmup_longer_than_the_schedule_warns_once_with_the_reached_factor(capsys):
    """warmup_epochs 20 with 10 epochs: the review weight peaks at 9/20 = 0.45 in the last epoch."""
    torch.manual_seed(0)
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, epochs=10,
                         extras={"path": "students[2]"})
    d = build_distiller("reviewkd", TinyNet((4, 8, 12)), TinyNet((8, 16, 32)), {"warmup_epochs": 20}, ctx)
    d.train()
    factors = [d(_batch(), e).logs["review_warmup"] for e in range(10)]
    assert max(factors) == pytest.approx(0.45)
    lines = _warn_lines(capsys)
    assert len(lines) == 1  # once, at build time, not per step
    assert "students[2].params.warmup_epochs" in lines[0] and "0.45" in lines[0]
    assert "20" in lines[0] and "10 epochs" in lines[0]


@pytest.mark.parametrize("epochs,warmup", [(10, 9), (10, 0), (240, 20)])
def test_a_warmup_that_reaches_full_weight_is_silent(capsys, epochs, warmup):
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, epochs=epochs)
    d = build_distiller("reviewkd", TinyNet((4, 8, 12)), TinyNet((8, 16, 32)), {"warmup_epochs": warmup}, ctx)
    assert d(_batch(), epochs - 1).logs["review_warmup"] == 1.0
    assert _warn_lines(capsys) == []


@pytest.mark.parametrize("epochs,expected", [(240, 20.0), (480, 20.0), (10, 10 / 12)])
def test_default_warmup_is_the_reference_fraction_of_the_schedule(capsys, epochs, expected):
    """Unset: min(20, epochs / 12), the official CIFAR-100 20 of 240 epochs; the first epoch
    (0-indexed) stays at zero and the review term reaches full weight within the run."""
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, epochs=epochs)
    d = build_distiller("reviewkd", TinyNet((4, 8, 12)), TinyNet((8, 16, 32)), {}, ctx)
    assert d.warmup_epochs == pytest.approx(expected)
    assert d(_batch(), 0).logs["review_warmup"] == 0.0
    assert d(_batch(), epochs - 1).logs["review_warmup"] == 1.0
    assert _warn_lines(capsys) == []
