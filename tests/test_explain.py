"""Explainers: contract properties for every method, equality with Captum called directly,
hand-worked values on a linear model, model hygiene, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (DeepLift, InputXGradient, IntegratedGradients, LayerAttribution,
                         LayerGradCam, NoiseTunnel, Occlusion, Saliency)
from torch import nn

import xkd.explain as E
from xkd.config import ExplainConfig
from xkd.errors import ConfigError, UnknownNameError, UserError
from xkd.explain.guards import HOOK_DICTS
from xkd.explain.postprocess import to_map
from xkd.models.base import Features, FeatureModel
from tests.rounding import assert_within_rounding, occlusion_scale, rounding_atol
from tests.tiny_models import TwoStage

METHODS = E.list_explainers()
FAST = {"integrated_gradients": {"n_steps": 8}, "smoothgrad": {"nt_samples": 4, "stdevs": 0.3},
        "occlusion": {"window": 4, "stride": 4}}


class SharedReLU(TwoStage):
    """One nn.ReLU instance called in both stages (DeepLift cannot handle it)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.stage1[2] = nn.Identity()
        self.stage2[2] = nn.Identity()

    def features(self, x: torch.Tensor) -> Features:
        a = self.act(self.stage1(x))
        b = self.act(self.stage2(a))
        p = b.mean((2, 3))
        return Features([a, b], [a, b], p, self.fc(p))


class FunctionalReLU(TwoStage):
    def features(self, x: torch.Tensor) -> Features:
        a = self.stage1(x)
        b = F.relu(self.stage2[1](self.stage2[0](a)))
        p = b.mean((2, 3))
        return Features([a, b], [a, b], p, self.fc(p))


class Linear(FeatureModel):
    """logits = W x + b: every gradient method has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def features(self, x: torch.Tensor) -> Features:
        z = self.fc(x.flatten(1))
        return Features([x], [x], x.flatten(1), z)


@pytest.fixture(scope="module")
def model() -> TwoStage:
    torch.manual_seed(0)
    m = TwoStage()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            m(torch.randn(8, 3, 16, 16) * 2 + 0.5)
    return m


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 4])


def _hooks(m: nn.Module) -> list[tuple[str, str, int]]:
    return [(n, a, len(getattr(mod, a))) for n, mod in m.named_modules() for a in HOOK_DICTS
            if getattr(mod, a, None)]


@pytest.mark.parametrize("method", METHODS)
def test_contract_properties_and_model_hygiene(method, model, data):
    x, t = data
    model.train()
    model.stage1[1].eval()  # a mixed mode must come back exactly as it was
    model.fc.weight.requires_grad_(False)
    pre_grad = torch.ones_like(model.stage2[0].weight)
    model.stage2[0].weight.grad = pre_grad
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    try:
        out = E.build(method, model, **FAST.get(method, {})).explain(x, t)
        assert out.shape == (5, 1, 16, 16) and out.dtype == torch.float32
        assert not out.requires_grad and torch.isfinite(out).all() and (out >= 0).all()
        assert torch.allclose(out.flatten(1).amax(1), torch.ones(5))  # default normalize='max'
        assert [m.training for m in model.modules()] == modes
        assert _hooks(model) == []
        assert model.stage2[0].weight.grad is pre_grad and torch.equal(pre_grad, torch.ones_like(pre_grad))
        assert all(p.grad is None for n, p in model.named_parameters() if n != "stage2.0.weight")
        assert [p.requires_grad for p in model.parameters()].count(False) == 1
        # eval mode while explaining: BatchNorm running statistics untouched
        assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    finally:
        model.fc.weight.requires_grad_(True)
        model.stage2[0].weight.grad = None
        model.eval()


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_sample(method, model, data):
    x, t = data
    ex = E.build(method, model, max_batch=3, **FAST.get(method, {}))  # chunks of 3 + 2
    batch = ex.explain(x, t)
    single = torch.cat([ex.explain(x[i:i + 1], t[i:i + 1]) for i in range(len(x))])
    assert_within_rounding(batch, single, _tolerance(method, model, x, t))


def _norm_max(m: torch.Tensor) -> torch.Tensor:
    return m / m.flatten(1).amax(1).clamp_min(1e-30).view(-1, 1, 1, 1)


def _captum_raw(method: str, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The same settings through Captum directly, pooled over channels here by hand (not normalised)."""
    m.eval()
    if method == "saliency":
        return Saliency(m).attribute(x, target=t, abs=True).amax(1, keepdim=True)
    if method == "input_x_gradient":
        return InputXGradient(m).attribute(x, target=t).abs().sum(1, keepdim=True)
    if method == "integrated_gradients":
        a = IntegratedGradients(m).attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=8)
        return a.abs().sum(1, keepdim=True)
    if method == "deeplift":
        return DeepLift(m).attribute(x, baselines=torch.zeros_like(x), target=t).detach().abs().sum(1, keepdim=True)
    if method == "gradcam":
        cam = LayerGradCam(m, m.stage_layers()[-1]).attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(cam, (16, 16), interpolate_mode="bilinear")
    if method == "occlusion":
        a = Occlusion(m).attribute(x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=t)
        return a.clamp_min(0).mean(1, keepdim=True)
    if method == "smoothgrad":
        outs = []
        for i in range(len(x)):
            torch.manual_seed(0)
            a = NoiseTunnel(Saliency(m)).attribute(x[i:i + 1], nt_type="smoothgrad", nt_samples=4,
                                                   stdevs=0.3, target=t[i:i + 1], abs=True)
            outs.append(a.amax(1, keepdim=True))
        return torch.cat(outs)
    raise AssertionError(f"no reference for {method}")


def _captum_reference(method: str, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``_captum_raw`` max-normalised per sample, as the explainers' default ``normalize='max'``."""
    return _norm_max(_captum_raw(method, m, x, t))


def _tolerance(method: str, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample float32 rounding tolerance for ``method``'s max-normalised maps (tests/rounding.py):
    gradient maps have scale 1 and sum over the forward and backward pass plus the method's own sums
    (channel pooling; IG's 8 steps; SmoothGrad's 4 samples; Grad-CAM's spatial mean of gradients,
    channel sum and 2x2 bilinear taps); occlusion is forward only and scaled by the target logit's
    terms over the map's raw maximum (the difference of two nearly equal logits is normalised)."""
    modes = [mod.training for mod in m.modules()]
    try:
        c = x.shape[1]
        if method == "occlusion":
            raw_max = _captum_raw(method, m, x.clone(), t).flatten(1).amax(1)
            return rounding_atol(m, x, occlusion_scale(m, x, t, raw_max), backward=False, extra_terms=c)
        extra = {"integrated_gradients": 8 + c, "smoothgrad": 4 + c}.get(method, c)
        if method == "gradcam":
            last = m.eval().features(x[:1]).stages[-1]
            extra = last.shape[-1] * last.shape[-2] + last.shape[1] + 4
        return rounding_atol(m, x, 1.0, backward=True, extra_terms=extra)
    finally:
        for mod, mode in zip(m.modules(), modes):
            mod.training = mode


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", METHODS)
def test_equals_captum_called_directly(method, model, data):
    x, t = data
    ours = E.build(method, model, **FAST.get(method, {})).explain(x, t)
    ref = _captum_reference(method, model, x.clone(), t)
    assert_within_rounding(ours, ref, _tolerance(method, model, x, t))


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients", "deeplift"])
def test_linear_model_closed_form(method):
    """For logits = W x + b: gradient = W_t, and x*grad = IG(0->x) = DeepLift(0) = x * W_t."""
    torch.manual_seed(3)
    m = Linear()
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 3])
    params = {"normalize": "none", "sign": "all", "channel_pool": "sum"}
    out = E.build(method, m, **params, **({"n_steps": 4} if method == "integrated_gradients" else {})).explain(x, t)
    w = m.fc.weight.detach()[t].view(2, 3, 8, 8)
    expected = w if method == "saliency" else x * w
    # scale: the largest sum of |x_c w_c| (|w_c| for saliency) that one pixel's value adds up
    scale = (expected.abs().sum(1).flatten(1).amax(1))
    atol = rounding_atol(m, x, scale, backward=True, extra_terms=4 + 3)
    assert_within_rounding(out, expected.sum(1, keepdim=True).abs(), atol)


def test_postprocessing_rules_hand_worked():
    a = torch.tensor([[[[1.0, -2.0]], [[3.0, -4.0]]]])  # (1, C=2, 1, 2)
    assert to_map(a, "abs", "sum", "none").flatten().tolist() == [4.0, 6.0]
    assert to_map(a, "positive", "max", "none").flatten().tolist() == [3.0, 0.0]
    assert to_map(a, "negative", "mean", "none").flatten().tolist() == [0.0, 3.0]
    assert to_map(a, "all", "sum", "none").flatten().tolist() == [4.0, 6.0]  # |(-2) + (-4)|
    assert torch.allclose(to_map(a, "abs", "l2", "none").flatten(), torch.tensor([10 ** 0.5, 20 ** 0.5]))
    assert to_map(a, "abs", "sum", "max").flatten().tolist() == pytest.approx([4 / 6, 1.0])
    assert to_map(a, "abs", "sum", "sum").flatten().tolist() == pytest.approx([0.4, 0.6])
    assert to_map(a, "abs", "sum", "minmax").flatten().tolist() == [0.0, 1.0]
    zero = torch.zeros(1, 2, 1, 2)
    for norm in ("max", "sum", "minmax"):
        assert to_map(zero, "abs", "sum", norm).eq(0).all()


def test_gradcam_layer_by_name_equals_index_and_level(model, data):
    x, t = data
    by_index = E.build("gradcam", model, layer=0).explain(x, t)
    by_name = E.build("gradcam", model, layer="stage1").explain(x, t)
    assert torch.equal(by_index, by_name)
    assert E.build("gradcam", model, layer=-1).settings()["params"]["layer"] == "stage2"


def test_smoothgrad_seeded_and_leaves_global_rng(model, data):
    x, t = data
    state = torch.get_rng_state()
    a = E.build("smoothgrad", model, seed=7, nt_samples=3).explain(x, t)
    assert torch.equal(torch.get_rng_state(), state)
    b = E.build("smoothgrad", model, seed=7, nt_samples=3).explain(x, t)
    c = E.build("smoothgrad", model, seed=8, nt_samples=3).explain(x, t)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_caller_contexts_autocast_no_grad_inference_mode(model, data):
    x, t = data
    ex = E.build("gradcam", model)
    plain = ex.explain(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = ex.explain(x, t)
    assert amp.dtype == torch.float32 and torch.equal(plain, amp)
    with torch.no_grad():
        assert torch.equal(ex.explain(x, t), plain)
    with torch.inference_mode():
        xi = x.clone()
        assert torch.equal(ex.explain(xi, t), plain)


def test_build_from_config_and_memory_knob(model, data):
    x, t = data
    cfg = ExplainConfig(method="integrated_gradients", params={"n_steps": 8}, max_batch=2)
    ex = E.build_from_config(cfg, model)
    assert ex.max_batch == 2 and ex.params.n_steps == 8
    whole = E.build("integrated_gradients", model, n_steps=8, max_batch=64).explain(x, t)
    assert_within_rounding(ex.explain(x, t), whole, _tolerance("integrated_gradients", model, x, t))


def test_errors_are_clear(model, data):
    x, t = data
    with pytest.raises(ConfigError, match=r"explain\.params\.layer.*stage indices -2\.\.1.*stage2"):
        E.build("gradcam", model, layer=5)
    with pytest.raises(ConfigError, match=r"explain\.params\.layer: unknown layer 'nope'.*stage1"):
        E.build("gradcam", model, layer="nope")
    with pytest.raises(UnknownNameError, match=r"explain\.method.*'gradcamm'.*gradcam.*saliency"):
        E.build("gradcamm", model)
    with pytest.raises(ConfigError, match=r"^explain\.params\.n_step: unknown key"):
        E.build("integrated_gradients", model, n_step=3)
    with pytest.raises(ConfigError, match=r"^explain\.params\.n_steps"):
        E.build("integrated_gradients", model, n_steps=0)
    with pytest.raises(ConfigError, match=r"^explain\.params\.channel_pool"):
        E.build("saliency", model, channel_pool="median")
    with pytest.raises(ConfigError, match=r"^evaluate\.params\.sign"):
        E.build_from_config(ExplainConfig(method="gradcam", params={"sign": "abs"}), model, path="evaluate")
    with pytest.raises(UserError, match="target must be a \\(B,\\) integer"):
        E.build("saliency", model).explain(x, t[:2])


def test_resolve_targets():
    labels = torch.tensor([2, 0])
    t_logits = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 0.0]])
    m_logits = torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 1.0]])
    assert E.resolve_targets("label", labels).tolist() == [2, 0]
    assert E.resolve_targets("teacher_top1", labels, teacher_logits=t_logits).tolist() == [1, 0]
    assert E.resolve_targets("predicted", labels, t_logits, model_logits=m_logits).tolist() == [2, 2]
    with pytest.raises(UserError, match="unknown target rule 'top5'; allowed: label, teacher_top1, predicted"):
        E.resolve_targets("top5", labels)
    with pytest.raises(UserError, match="needs the teacher's logits"):
        E.resolve_targets("teacher_top1", labels)
    with pytest.raises(UserError, match="integer class labels"):
        E.resolve_targets("label", torch.tensor([0.5, 1.5]))


@pytest.mark.parametrize("bad", [SharedReLU, FunctionalReLU])
def test_deeplift_refuses_models_it_cannot_handle(bad, data):
    x, t = data
    torch.manual_seed(0)
    m = bad().eval()
    with pytest.raises(UserError, match="deeplift needs distinct activation modules"):
        E.build("deeplift", m).explain(x, t)
    assert _hooks(m) == [] and not m.training
    E.build("saliency", m).explain(x, t)  # other explainers still work on it


def test_deeplift_refuses_aliased_activation(data):
    x, t = data
    m = TwoStage().eval()
    m.act_alias = m.stage2[2]  # the same module under two names: Captum would hook it twice
    with pytest.raises(UserError, match="registered under several names: 'stage2.2' = 'act_alias'"):
        E.build("deeplift", m).explain(x, t)


def test_deeplift_inplace_relu_restored(model, data):
    x, t = data
    ref = E.build("deeplift", model).explain(x, t)
    for mod in model.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = True
    try:
        out = E.build("deeplift", model).explain(x, t)
        assert all(mod.inplace for mod in model.modules() if isinstance(mod, nn.ReLU))
    finally:
        for mod in model.modules():
            if isinstance(mod, nn.ReLU):
                mod.inplace = False
    assert_within_rounding(out, ref, _tolerance("deeplift", model, x, t))


@pytest.fixture(scope="module")
def resnet8() -> nn.Module:
    from xkd.models import build as build_model

    torch.manual_seed(0)
    return build_model("resnet8", num_classes=5, in_channels=3, image_size=16)


@pytest.mark.parametrize("method", METHODS)
def test_resnet8_contract_and_batch_invariance(method, resnet8, data):
    x, t = data[0][:3], data[1][:3]
    resnet8.train()
    ex = E.build(method, resnet8, max_batch=2, **FAST.get(method, {}))
    out = ex.explain(x, t)
    assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32 and (out >= 0).all()
    assert torch.isfinite(out).all() and resnet8.training and _hooks(resnet8) == []
    assert all(p.grad is None for p in resnet8.parameters())
    single = torch.cat([ex.explain(x[i:i + 1], t[i:i + 1]) for i in range(3)])
    assert_within_rounding(out, single, _tolerance(method, resnet8, x, t))


def test_resnet8_gradcam_default_is_last_stage(resnet8, data):
    x, t = data
    resnet8.eval()
    ex = E.build("gradcam", resnet8)
    last = resnet8.stage_layers()[-1]
    assert ex.layer is last
    cam = LayerGradCam(resnet8, last).attribute(x, target=t, relu_attributions=True)
    ref = _norm_max(LayerAttribution.interpolate(cam, (16, 16), interpolate_mode="bilinear"))
    assert_within_rounding(ex.explain(x, t), ref, _tolerance("gradcam", resnet8, x, t))


def test_deeplift_refuses_torchvision_resnet_reusing_relu(data):
    """torchvision's BasicBlock calls ``self.relu`` twice (captum #578): refuse, don't mis-explain."""
    from xkd.models import build as build_model

    m = build_model("tv:resnet18", num_classes=5, in_channels=3, image_size=16)
    with pytest.raises(UserError, match=r"deeplift needs distinct activation modules.*layer1\.0\.relu' \(2x\)"):
        E.build("deeplift", m).explain(*data)
    assert _hooks(m) == []


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method, wrong", [
    ("integrated_gradients", lambda m, x, t: E.build("integrated_gradients", m, n_steps=7).explain(x, t)),
    ("smoothgrad", lambda m, x, t: E.build("smoothgrad", m, nt_samples=4, stdevs=0.25).explain(x, t)),
    ("occlusion", lambda m, x, t: _norm_max(Occlusion(m).attribute(
        x, sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=t, baselines=0.01).clamp_min(0))),
    ("occlusion", lambda m, x, t: E.build("occlusion", m, window=4, stride=2).explain(x, t)),
], ids=["ig_7_steps", "smoothgrad_stdev", "occlusion_baseline_0.01", "occlusion_stride"])
def test_rounding_tolerance_still_catches_subtle_mistakes(method, wrong, model, data):
    """The derived tolerance is not loose: a result off by a small setting mistake (one IG step, a
    baseline of 0.01 where inputs have unit scale) is many tolerances away from Captum's."""
    x, t = data
    ref = _captum_reference(method, model, x.clone(), t)
    with pytest.raises(AssertionError, match="beyond float32 rounding"):
        assert_within_rounding(wrong(model, x.clone(), t), ref, _tolerance(method, model, x, t))
