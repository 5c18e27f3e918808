"""Video students (r2plus1d_tiny, frame_cnn), 2-D teachers on audio/image inputs, explain_video.

References: ``torch.nn.functional.conv3d`` for the factorised convolutions, invariants (frame
order, hooks on ``stage_layers()``), autograd gradients for saliency and x * w for a linear model.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xkd.models as M
from xkd.config import ModelConfig
from xkd.errors import ConfigError, UserError
from xkd.explain.video import explain_video
from xkd.models.base import Features, FeatureModel
from xkd.models.video import SpatialConv, TemporalConv

VIDEO = ["r2plus1d_tiny", "frame_cnn"]


def _clip(b: int, t: int, s: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def test_factorised_convs_equal_conv3d() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 9, 7)
    sp = SpatialConv(4, 6, 3, 2, 1, bias=True)
    ref = F.conv3d(x, sp.weight[:, :, None], sp.bias, stride=(1, 2, 2), padding=(0, 1, 1))
    torch.testing.assert_close(sp(x), ref)
    tc = TemporalConv(4, 3, (3, 1), 1, (1, 0), bias=False)
    ref = F.conv3d(x, tc.weight[..., None], None, padding=(1, 0, 0))
    torch.testing.assert_close(tc(x), ref)


@pytest.mark.parametrize("name", VIDEO)
@pytest.mark.parametrize("t", [1, 3, 5])
def test_features_shapes_on_odd_frame_counts(name: str, t: int) -> None:
    m = M.build(name, num_classes=4, in_channels=3, image_size=16).eval()
    x = _clip(2, t)
    f = m.features(x)
    stride = 2 if name == "r2plus1d_tiny" else 1  # r2plus1d_tiny's stem halves H and W
    assert [tuple(s.shape) for s in f.stages] == [
        (2, 16, t, 16 // stride, 16 // stride), (2, 32, t, 8 // stride, 8 // stride),
        (2, 64, t, 4 // stride, 4 // stride)]
    assert f.pooled.shape == (2, 64) and f.logits.shape == (2, 4)
    for pre, s in zip(f.preact, f.stages):
        torch.testing.assert_close(torch.relu(pre), s)
    torch.testing.assert_close(m(x), f.logits)
    torch.testing.assert_close(f.pooled, f.stages[-1].mean((2, 3, 4)))
    infos, width = M.describe(m, x[0])
    assert width == 64 and [(i.channels, i.frames, i.height) for i in infos] == [
        (16, t, 16 // stride), (32, t, 8 // stride), (64, t, 4 // stride)]


@pytest.mark.parametrize("name", VIDEO)
def test_stage_layers_output_the_stages(name: str) -> None:
    m = M.build(name, num_classes=3).eval()
    seen: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _i, out: seen.append(out)) for layer in m.stage_layers()]
    x = _clip(1, 4)
    f = m.features(x)
    for h in handles:
        h.remove()
    assert len(seen) == 3
    for a, b in zip(seen, f.stages):
        assert a is b


def test_frame_order_matters_only_for_the_temporal_model() -> None:
    x = _clip(2, 6)
    rev = x.flip(2)
    torch.manual_seed(0)
    frame = M.build("frame_cnn", num_classes=3).eval()
    torch.testing.assert_close(frame(x), frame(rev), atol=1e-5, rtol=1e-5)  # mean over frames
    r21 = M.build("r2plus1d_tiny", num_classes=3).eval()
    assert not torch.allclose(r21(x), r21(rev), atol=1e-4)


def test_video_params_validated() -> None:
    m = M.build(ModelConfig(name="r2plus1d_tiny", params={"widths": [8, 8, 16], "blocks": 2}), 5)
    assert m.features(_clip(1, 2)).pooled.shape == (1, 16)
    assert sum(len(b) for b in m.stages) == 6
    with pytest.raises(ConfigError, match=r"students\[0\].model.params.blocks"):
        M.build(ModelConfig(name="frame_cnn", params={"blocks": 2}), 5, path="students[0].model")


@pytest.mark.parametrize("name, channels", [("resnet8", 1), ("resnet14", 1), ("resnet8", 3), ("wrn-16-2", 1),
                                            ("mobilenetv2", 1)])
def test_two_d_teachers_on_audio_and_image_inputs(name: str, channels: int) -> None:
    m = M.build(name, num_classes=5, in_channels=channels, image_size=32).eval()
    x = torch.randn(3, channels, 32, 32)
    f = m.features(x)
    assert f.logits.shape == (3, 5) and f.pooled.shape[0] == 3
    infos, _ = M.describe(m, x[0])
    assert infos[0].frames is None and infos[-1].channels == f.stages[-1].shape[1]


# --------------------------------------------------------------------------- explain_video


class OneFrame(FeatureModel):
    """Logits from a linear map of frame ``t`` only (all other frames are ignored)."""

    input_dims = 4

    def __init__(self, t: int, classes: int = 3, s: int = 8) -> None:
        super().__init__()
        self.t = t
        self.fc = nn.Linear(3 * s * s, classes)

    def features(self, x: torch.Tensor) -> Features:
        p = x[:, :, self.t].flatten(1)
        return Features([], [], p, self.fc(p))


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_model_looking_at_one_frame_gets_all_temporal_importance(method: str) -> None:
    torch.manual_seed(0)
    model = OneFrame(t=3)
    x = _clip(4, 6, 8)
    spatial, temporal = explain_video(model, x, torch.tensor([0, 1, 2, 0]), method=method, n_steps=8)
    assert spatial.shape == (4, 6, 8, 8) and temporal.shape == (4, 6)
    expected = torch.zeros(4, 6)
    expected[:, 3] = 1
    torch.testing.assert_close(temporal, expected)
    assert (spatial[:, [0, 1, 2, 4, 5]] == 0).all() and (spatial >= 0).all()
    torch.testing.assert_close(spatial.flatten(1).amax(1), torch.ones(4))


def test_input_x_gradient_of_linear_model_by_hand() -> None:
    torch.manual_seed(1)
    model = OneFrame(t=1, s=4)
    x = _clip(2, 3, 4)
    target = torch.tensor([2, 0])
    spatial, _ = explain_video(model, x, target, method="input_x_gradient")
    w = model.fc.weight[target].detach().view(2, 3, 4, 4)
    expected = (x[:, :, 1] * w).abs().sum(1)
    expected = expected / expected.flatten(1).amax(1).view(2, 1, 1)
    torch.testing.assert_close(spatial[:, 1], expected)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_batch_equals_per_sample_and_model_left_as_it_was(method: str) -> None:
    torch.manual_seed(2)
    model = M.build("r2plus1d_tiny", 3)
    model.train()
    hooks_before = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    bn = model.stem[1]
    mean_before = bn.running_mean.clone()
    x = _clip(3, 5, 12, seed=3)
    target = torch.tensor([0, 2, 1])
    spatial, temporal = explain_video(model, x, target, method=method, n_steps=4, max_batch=2)
    for i in range(3):
        s1, t1 = explain_video(model, x[i:i + 1], target[i:i + 1], method=method, n_steps=4)
        torch.testing.assert_close(spatial[i:i + 1], s1, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(temporal[i:i + 1], t1, atol=1e-5, rtol=1e-4)
    assert model.training and all(m.training for m in model.modules())
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()) == hooks_before
    assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(bn.running_mean, mean_before)  # explained in eval mode
    torch.testing.assert_close(temporal.sum(1), torch.ones(3))


def test_saliency_matches_autograd() -> None:
    torch.manual_seed(4)
    model = M.build("frame_cnn", 3).eval()
    x = _clip(2, 3, 8).requires_grad_()
    target = torch.tensor([1, 2])
    grad, = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    ref = grad.abs().sum(1)
    spatial, temporal = explain_video(model, x.detach(), target)
    torch.testing.assert_close(spatial, ref / ref.flatten(1).amax(1).view(2, 1, 1, 1))
    torch.testing.assert_close(temporal, ref.sum((2, 3)) / ref.sum((1, 2, 3))[:, None])


def test_bad_inputs_are_one_line_user_errors() -> None:
    model = OneFrame(t=0)
    with pytest.raises(UserError, match="unknown method 'gradcam'"):
        explain_video(model, _clip(1, 2, 8), torch.tensor([0]), method="gradcam")
    with pytest.raises(UserError, match=r"\(B,C,T,H,W\)"):
        explain_video(model, torch.randn(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(UserError, match="target"):
        explain_video(model, _clip(2, 2, 8), torch.tensor([0, 1, 2]))
