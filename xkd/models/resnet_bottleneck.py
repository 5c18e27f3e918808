"""ResNet-50 for CIFAR (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition",
CVPR 2016, table 1 and fig. 5 right), the KD literature's CIFAR "ResNet50" teacher (CRD /
RepDistiller, ReviewKD: VGG8 and MobileNetV2 students).

Bottleneck block: 1x1 conv (p channels) - BN - ReLU, 3x3 conv (p, stride s) - BN - ReLU, 1x1 conv
(4p) - BN, plus the shortcut (identity, or 1x1 conv - BN projection when the shape changes, the
paper's option B), then ReLU. Stages of 3, 4, 6, 3 blocks with p = 64, 128, 256, 512 and strides
1, 2, 2, 2. CIFAR adaptation (as in the KD literature): a 3x3, 64-channel stem with stride 1 and no
max-pool, so a 32 px input gives stages at 32, 16, 8, 4 (widths 256, 512, 1024, 2048); global
average pooling and one linear layer.

Feature taps: ``preact[i]`` is the last block's residual sum before its final ReLU,
``stages[i] = relu(preact[i])`` (ReviewKD notes 1.5). Module and parameter names equal the
community code's (``layer1.0.conv1.weight``, ``layer1.0.shortcut.0.weight``, ``linear.*``), so its
checkpoints load as they are. Each ReLU is its own ``nn.ReLU``; a block's final ReLU is ``relu_out``.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import FeatureModel, Features, MODELS, run_stages, stage_activations
from xkd.models.cifar_resnet import init_weights


class BottleneckResNetParams(NumbersAreNumbers):
    """The bottleneck ResNets take no extra parameters (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


class Bottleneck(nn.Module):
    """1x1 - 3x3 - 1x1 bottleneck with expansion 4 (paper fig. 5 right)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )
        self.relu_out = nn.ReLU()

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.bn3(self.conv3(out)) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_out(self.preact(x))


class BottleneckResNet(FeatureModel):
    """Four-stage bottleneck ResNet for small images (see the module docstring)."""

    preact_relation = "relu"

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int = 100,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        cin = 64
        for k, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)), start=1):
            units = []
            for i in range(n):
                units.append(Bottleneck(cin, planes, stride if i == 0 else 1))
                cin = planes * Bottleneck.expansion
            setattr(self, f"layer{k}", nn.Sequential(*units))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)
        init_weights(self)

    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def features(self, x: torch.Tensor) -> Features:
        x = self.relu(self.bn1(self.conv1(x)))
        x, stages, preact = run_stages(x, self.layers())
        pooled = torch.flatten(self.pool(x), 1)
        return Features(stages, preact, pooled, self.linear(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return stage_activations(self.layers())


@MODELS.register("resnet50", params=BottleneckResNetParams, family="resnet_bottleneck")
def resnet50(num_classes: int, in_channels: int = 3, image_size: int = 32) -> BottleneckResNet:
    """CIFAR ResNet-50 (bottleneck blocks 3-4-6-3, 3x3 stride-1 stem; He et al. 2016)."""
    return BottleneckResNet((3, 4, 6, 3), num_classes, in_channels)
