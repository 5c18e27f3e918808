"""CIFAR-style ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, sec. 4.2).

Depth 6n+2: a 3x3 stem, three stages of n BasicBlocks (the first block of stages 2 and 3 has
stride 2), global average pooling and a linear classifier. A BasicBlock computes
``y = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))`` (paper eq. 1, with a 1x1 conv + BN
projection shortcut when the shape changes, "option B").

Widths: resnet8..110 use (16, 32, 64) with a 16-channel stem; the "x4" variants used in the
knowledge-distillation literature (CRD / RepDistiller, ReviewKD) use (64, 128, 256) with a
32-channel stem.

Feature taps (DESIGN 3.2, ReviewKD notes 1.5): ``preact[i]`` is the last block's residual sum of
stage i *before* its final ReLU; ``stages[i] = relu(preact[i])`` is the stage output. Every ReLU is
its own ``nn.ReLU`` instance (Captum DeepLift needs this) and the final ReLU of each stage is the
module returned by :meth:`stage_layers` (Captum LayerGradCam hooks it).
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import MODELS, FeatureModel, Features


class CifarResNetParams(NumbersAreNumbers):
    """CIFAR ResNets take no extra parameters (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (He et al. 2015, fan-out), BN (1-D/2-D/3-D) and GroupNorm weight 1 / bias 0,
    default Linear. Shared by every built-in backbone, the video students and FFSD's modules."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus shortcut; ``relu_out`` is the block's own final ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu_out = nn.ReLU()

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The residual sum before the final ReLU."""
        return self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_out(self.preact(x))


class Stage(nn.Module):
    """``n`` BasicBlocks; :meth:`forward_both` also returns the last block's pre-ReLU sum."""

    def __init__(self, cin: int, cout: int, n: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        pre = last.preact(x)
        return last.relu_out(pre), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_both(x)[0]


class CifarResNet(FeatureModel):
    """ResNet-(6n+2) for small images; any input size (adaptive pooling), any channel count."""

    preact_relation = "relu"
    COMMUNITY_KEYS = ((r"^(layer\d+)\.(\d+)\.", r"\1.blocks.\2."), (r"\.downsample\.", ".shortcut."))
    """CRD / RepDistiller ``resnet.py`` names -> ours (``layer1.0.downsample.0`` -> ``layer1.blocks.0.shortcut.0``)."""

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int] = (16, 32, 64),
        stem: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 >= 8, got {depth}")
        n = (depth - 2) // 6
        self.depth, self.widths = depth, tuple(widths)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.layer1 = Stage(stem, widths[0], n, 1)
        self.layer2 = Stage(widths[0], widths[1], n, 2)
        self.layer3 = Stage(widths[1], widths[2], n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> Features:
        x = self.relu(self.bn1(self.conv1(x)))
        stages, preact = [], []
        for layer in (self.layer1, self.layer2, self.layer3):
            x, pre = layer.forward_both(x)
            stages.append(x)
            preact.append(pre)
        pooled = torch.flatten(self.pool(x), 1)
        return Features(stages, preact, pooled, self.fc(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return [layer.blocks[-1].relu_out for layer in (self.layer1, self.layer2, self.layer3)]


def _register(name: str, depth: int, widths: tuple[int, int, int], stem: int) -> None:
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32) -> CifarResNet:
        # image_size is accepted for the uniform factory signature; any size works.
        return CifarResNet(depth, widths, stem, num_classes=num_classes, in_channels=in_channels)

    factory.__doc__ = f"CIFAR ResNet-{depth} (widths {widths}, stem {stem}; He et al. 2016)"
    MODELS.register(name, params=CifarResNetParams, family="cifar_resnet")(factory)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 32, 64), 16)
_register("resnet8x4", 8, (64, 128, 256), 32)
_register("resnet32x4", 32, (64, 128, 256), 32)
