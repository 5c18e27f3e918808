"""ce, kd and e2kd distillers; the differentiable Grad-CAM against Captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from tests.test_distill_toy import TinyNet
from xkd.distill import METHODS, DistillContext, Distiller, StepOutput, build_distiller, list_methods
from xkd.distill.gradcam import differentiable_gradcam
from xkd.errors import UserError


def _ctx(task="classification"):
    return DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, task=task)


def _batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(b, 3, 16, 16, generator=g),
            "label": torch.randint(0, 5, (b,), generator=g)}


def test_registry_and_exports():
    assert {"ce", "kd", "reviewkd", "e2kd"} <= set(list_methods())
    assert METHODS.entry("ce").meta["needs_teacher"] is False
    assert all(METHODS.entry(m).meta["needs_teacher"] for m in ("kd", "reviewkd", "e2kd"))
    d = build_distiller("ce", TinyNet(), None, {}, _ctx())
    assert isinstance(d, Distiller) and d.extra_modules() == []
    out = d(_batch(), 0)
    assert isinstance(out, StepOutput) and set(out.losses) == {"ce"}


def test_ce_regression_uses_mse_and_l1():
    torch.manual_seed(0)
    net = TinyNet(num_classes=1).eval()
    b = _batch()
    b["label"] = torch.randn(4)
    pred = net(b["image"])[:, 0].detach().numpy()
    y = b["label"].numpy()
    mse = build_distiller("ce", net, None, {}, _ctx("regression"))(b, 0).losses["ce"]
    l1 = build_distiller("ce", net, None, {"regression_loss": "l1"}, _ctx("regression"))(b, 0).losses["ce"]
    assert mse.item() == pytest.approx(float(np.mean((pred - y) ** 2)), rel=1e-5)
    assert l1.item() == pytest.approx(float(np.mean(np.abs(pred - y))), rel=1e-5)
    with pytest.raises(UserError, match="classification"):
        build_distiller("kd", TinyNet(num_classes=1), TinyNet(num_classes=1), {}, _ctx("regression"))


def test_kd_distiller_weights_ce_and_kd():
    torch.manual_seed(0)
    teacher, student = TinyNet(), TinyNet((4, 8, 8))
    d = build_distiller("kd", student, teacher, {"T": 3.0, "alpha": 0.25}, _ctx()).eval()
    b = _batch()
    out = d(b, 0)
    s = student(b["image"]).detach().double().numpy()
    t = teacher(b["image"]).detach().double().numpy()
    y = b["label"].numpy()

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ce = -np.mean(log_softmax(s)[np.arange(4), y])
    lt, ls = log_softmax(t / 3), log_softmax(s / 3)
    kd = 9 * np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1))
    assert out.losses["ce"].item() == pytest.approx(0.75 * ce, rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(0.25 * kd, rel=1e-4)


@pytest.mark.parametrize("train_mode", [False, True])
def test_differentiable_gradcam_equals_captum(train_mode):
    torch.manual_seed(0)
    net = TinyNet((6, 8, 10))
    net.train(train_mode)
    x = torch.randn(3, 3, 16, 16)
    target = torch.tensor([0, 3, 1])
    layer = net.stage_layers()[-1]
    ref = LayerGradCam(net, layer).attribute(x, target=target, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (16, 16), interpolate_mode="bilinear").detach()
    f = net.features(x)
    got = differentiable_gradcam(f.stages[-1], f.logits, target, (16, 16))
    assert got.shape == ref.shape == (3, 1, 16, 16)
    assert ref.abs().max() > 0
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert got.requires_grad


def test_e2kd_double_backward_reaches_student_and_not_teacher():
    torch.manual_seed(0)
    teacher, student = TinyNet((8, 16, 32)), TinyNet((4, 8, 12))
    d = build_distiller("e2kd", student, teacher, {}, _ctx()).train()
    b = _batch()
    out = d(b, 0)
    assert set(out.losses) == {"ce", "kd", "exp"} and -1 <= out.logs["exp_cos"] <= 1
    assert out.losses["exp"].item() == pytest.approx(1 - out.logs["exp_cos"], rel=1e-5)
    names, params = zip(*student.named_parameters())
    grads = dict(zip(names, torch.autograd.grad(out.losses["exp"], params, allow_unused=True,
                                                retain_graph=True)))
    # the explanation term alone moves the student through its gradient (double backprop): the
    # first stage and the classifier (whose weights enter the CAM only via dz/dA) get gradient
    for name in ("bodies.0.0.weight", "fc.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0
    sum(out.losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training


def test_e2kd_teacher_map_is_captum_of_teacher_top1():
    torch.manual_seed(1)
    teacher, student = TinyNet((8, 16, 32)), TinyNet((4, 8, 12))
    d = build_distiller("e2kd", student, teacher, {"ce_weight": 0.0, "lambda_exp": 2.0}, _ctx()).eval()
    b = _batch()
    top1 = teacher(b["image"]).argmax(1)
    f = student.features(b["image"])
    e_s, e_t = d.explanations(b["image"], top1, f.stages[-1], f.logits)
    ref = LayerGradCam(teacher, teacher.stage_layers()[-1]).attribute(
        b["image"], target=top1, relu_attributions=True)
    ref = LayerAttribution.interpolate(ref, (16, 16), interpolate_mode="bilinear")
    assert torch.allclose(e_t, ref.detach(), atol=1e-6) and not e_t.requires_grad
    cos = torch.nn.functional.cosine_similarity(e_s.flatten(1), e_t.flatten(1), dim=1)
    out = d(b, 0)
    assert out.losses["ce"].item() == 0.0
    assert out.losses["exp"].item() == pytest.approx(2.0 * (1 - cos).mean().item(), rel=1e-5)


def test_e2kd_explanation_shuffle_aligns_with_another_samples_teacher_map():
    """The control of issue 15: sample i's map is compared with the teacher's map of sample
    perm[i], perm a derangement drawn from torch's RNG at the step (replayed here)."""
    from xkd.distill.controls import derangement

    torch.manual_seed(2)
    teacher, student = TinyNet((8, 16, 32)), TinyNet((4, 8, 12))
    d = build_distiller("e2kd", student, teacher, {"explanation_shuffle": True}, _ctx()).eval()
    b = _batch(b=6)
    top1 = teacher(b["image"]).argmax(1)
    f = student.features(b["image"])
    e_s, e_t = d.explanations(b["image"], top1, f.stages[-1], f.logits)
    torch.manual_seed(7)
    perm = derangement(6)
    assert (perm != torch.arange(6)).all()
    torch.manual_seed(7)
    out = d(b, 0)
    cos = torch.nn.functional.cosine_similarity(e_s.flatten(1), e_t[perm].flatten(1), dim=1)
    assert out.losses["exp"].item() == pytest.approx((1 - cos).mean().item(), rel=1e-5)
    own = torch.nn.functional.cosine_similarity(e_s.flatten(1), e_t.flatten(1), dim=1)
    assert abs((1 - own).mean().item() - out.losses["exp"].item()) > 1e-4
