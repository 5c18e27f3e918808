"""Tiny FeatureModel used by the distillation tests (and a check of its own contract)."""

from __future__ import annotations

import torch
from torch import nn

from xkd.models.base import Features, FeatureModel, describe


class TinyNet(FeatureModel):
    """stem conv, then stages conv3x3(stride)+BN (pre-activation) -> ReLU module (stage output)."""

    def __init__(self, channels=(8, 16, 32), strides=(1, 2, 2), num_classes=5, in_ch=3,
                 stem_stride=1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_ch, channels[0], 3, stride=stem_stride, padding=1, bias=False)
        bodies, acts, prev = [], [], channels[0]
        for c, s in zip(channels, strides):
            bodies.append(nn.Sequential(nn.Conv2d(prev, c, 3, stride=s, padding=1, bias=False),
                                        nn.BatchNorm2d(c)))
            acts.append(nn.ReLU())
            prev = c
        self.bodies, self.acts = nn.ModuleList(bodies), nn.ModuleList(acts)
        self.fc = nn.Linear(prev, num_classes)

    def features(self, x: torch.Tensor) -> Features:
        h = self.stem(x)
        stages, preact = [], []
        for body, act in zip(self.bodies, self.acts):
            pre = body(h)
            h = act(pre)
            preact.append(pre)
            stages.append(h)
        pooled = h.mean(dim=(2, 3))
        return Features(stages, preact, pooled, self.fc(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return list(self.acts)


class FlatNet(FeatureModel):
    """A model without spatial stages (an MLP)."""

    def __init__(self, num_classes=5) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3 * 16 * 16, 12), nn.Linear(12, num_classes)

    def features(self, x: torch.Tensor) -> Features:
        h = torch.relu(self.fc1(x.flatten(1)))
        return Features([], [], h, self.fc2(h))

    def stage_layers(self) -> list[nn.Module]:
        return []


def test_tiny_net_contract():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = torch.randn(2, 3, 16, 16)
    outs = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in net.stage_layers()]
    f = net.features(x)
    for h in hooks:
        h.remove()
    assert all(torch.equal(a, b) for a, b in zip(outs, f.stages))
    infos, pooled = describe(net, x[0])
    assert [(i.channels, i.height) for i in infos] == [(8, 16), (16, 8), (32, 4)] and pooled == 32
