"""Pre-activation taps of wrapped models (``tv:NAME``, user factories; issue 13 item 6).

ReviewKD distils the teacher's pre-activation maps. For a hooked model the stage output is often the
output of an activation module (torchvision ResNets end every block with ``relu``, VGG's stages are
ReLUs); ``preact`` must then be that activation's *input*. The reference values are captured here
independently, with a forward pre-hook on the very ReLU module (its last call in the stage).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

import xkd.models as M
from xkd.models import hooked
from xkd.models.hooked import wrap



def _inputs_of(module: nn.Module, run) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    h = module.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()))
    try:
        run()
    finally:
        h.remove()
    return seen


def test_tv_resnet18_preact_is_the_input_of_each_stages_last_relu() -> None:
    torch.manual_seed(0)
    m = M.build("tv:resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = m.features(x)
    assert m.preact_relation == "relu" and m.preact_kinds == ["relu"] * 4
    for i, layer in enumerate((m.net.layer1, m.net.layer2, m.net.layer3, m.net.layer4)):
        with torch.no_grad():
            ref = _inputs_of(layer[-1].relu, lambda: m.net(x))[-1]  # BasicBlock: relu runs twice
        assert (f.preact[i] < 0).any(), f"stage {i}: a pre-activation map has negative values"
        torch.testing.assert_close(f.preact[i], ref, rtol=0, atol=0)
        torch.testing.assert_close(f.stages[i], torch.relu(ref), rtol=0, atol=0)


def test_tv_resnet18_preact_carries_gradients() -> None:
    m = M.build("tv:resnet18", num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    f = m.features(x)
    f.preact[1].square().mean().backward()
    assert m.net.layer2[0].conv1.weight.grad.abs().sum() > 0


def test_tv_mobilenet_v2_linear_stages_and_relu6_head() -> None:
    m = M.build("tv:mobilenet_v2", num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        f = m.features(x)
    # inverted residual outputs are linear (no activation follows): preact is the stage itself;
    # the last stage (features.18, conv-BN-ReLU6) has its ReLU6 input as preact
    assert m.preact_kinds[:-1] == ["identity"] * (len(f.stages) - 1) and m.preact_kinds[-1] == "relu6"
    assert m.preact_relation == "mixed"
    assert all(p is s for p, s in zip(f.preact[:-1], f.stages[:-1]))
    with torch.no_grad():
        ref = _inputs_of(m.net.features[18][2], lambda: m.net(x))[-1]
    torch.testing.assert_close(f.preact[-1], ref, rtol=0, atol=0)
    torch.testing.assert_close(f.stages[-1], nn.functional.relu6(ref), rtol=0, atol=0)


def test_tv_vgg_stage_is_a_relu_module_its_input_is_the_preact(caplog) -> None:
    hooked._WARNED.discard("tv:vgg11_bn")  # said once per process: forget an earlier build
    with caplog.at_level(logging.WARNING, logger="xkd.models.hooked"):
        m = M.build("tv:vgg11_bn", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        f = m.features(x)
    # stages: the ReLU before each max-pool, then (1x1 at 32 px) the features' final max-pool, a
    # pooled ReLU map no activation module produces: no pre-activation there, said once
    assert m.preact_kinds == ["relu"] * 5 + ["unavailable"] and m.preact_relation == "mixed"
    assert f.preact[-1] is f.stages[-1]
    assert any("tv:vgg11_bn: stage(s) features " in r.getMessage() for r in caplog.records)
    for name, p in zip(m.stage_names[:-1], f.preact):
        relu = dict(m.net.named_modules())[name]
        assert isinstance(relu, nn.ReLU)
        with torch.no_grad():
            torch.testing.assert_close(p, _inputs_of(relu, lambda: m.net(x))[-1], rtol=0, atol=0)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.relu(self.conv(x))


def test_stage_without_a_reachable_preact_warns_once_naming_the_model(caplog) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Block(), Block(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with caplog.at_level(logging.WARNING, logger="xkd.models.hooked"):
        m = wrap(net, in_channels=3, image_size=16, label="my.models:blocky")
        wrap(net, in_channels=3, image_size=16, label="my.models:blocky")
    assert m.stage_names == ["1", "2", "3"]
    assert m.preact_kinds == ["relu", "unavailable", "unavailable"]
    warnings = [r.getMessage() for r in caplog.records if "my.models:blocky" in r.getMessage()]
    assert len(warnings) == 1 and "2, 3" in warnings[0] and "post-activation" in warnings[0]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        f = m.features(x)
    torch.testing.assert_close(f.preact[0], net[0](x), rtol=0, atol=0)
    assert f.preact[1] is f.stages[1] and f.preact[2] is f.stages[2]


def test_factory_module_with_relu_modules_gets_preact(tmp_path) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    m = wrap(net, in_channels=3, image_size=16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        f = m.features(x)
        pre1 = net[1](net[0](x))
        pre2 = net[3](torch.relu(pre1))
    assert m.preact_relation == "relu"
    torch.testing.assert_close(f.preact[0], pre1, rtol=0, atol=0)
    torch.testing.assert_close(f.preact[1], pre2, rtol=0, atol=0)  # in-place ReLU: copied first
    torch.testing.assert_close(f.stages[1], torch.relu(pre2), rtol=0, atol=0)


def test_reviewkd_distils_the_tv_teachers_pre_activation() -> None:
    from xkd.distill import DistillContext, build_distiller

    torch.manual_seed(0)
    teacher, student = M.build("tv:resnet18", 10).eval(), M.build("resnet8", 10)
    d = build_distiller("reviewkd", student, teacher, {"warmup_epochs": 0},
                        DistillContext(example=torch.randn(1, 3, 32, 32), num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        taps = d._teacher_taps(teacher.features(x))
        refs = [_inputs_of(layer[-1].relu, lambda: teacher.net(x))[-1]
                for layer in (teacher.net.layer2, teacher.net.layer3, teacher.net.layer4)]
    for tap, ref in zip(taps[:-1], refs):  # the student's 3 stages pair with the deepest 3
        torch.testing.assert_close(tap, ref, rtol=0, atol=0)
    assert all((t < 0).any() for t in taps[:-1])
