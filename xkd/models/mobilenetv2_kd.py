"""The KD literature's CIFAR MobileNetV2 student (``mobilenetv2_kd``): the network behind the
"MobileNetV2" rows of CRD / RepDistiller and ReviewKD (VGG13 -> MobileNetV2, ResNet50 ->
MobileNetV2), after Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018, table 2, with width 0.5 and expansion 6.

It differs from xkd's own ``mobilenetv2`` (:mod:`xkd.models.mobilenetv2`), so it is registered
under its own name: widths are ``int(c * 0.5)`` without rounding to multiples of 8 (16 stem, then
8, 12, 16, 32, 48, 80, 160), the stem has stride 2, the (t, c, n, s) table keeps the paper's
strides (1, 1, 2, 2, 1, 2, 1), every inverted residual has its 1x1 expansion conv (also for
t = 1), and the activations are plain ReLU (the paper uses ReLU6). A 32 px input gives maps at
16, 16, 8, 4, 4, 2, 2; a 1x1 conv - BN - ReLU head to 1280 channels, global average pooling and one
linear layer follow.

Inverted residual: 1x1 conv (t * c_in) - BN - ReLU, 3x3 depthwise (stride s) - BN - ReLU, 1x1 conv
(c_out) - BN (linear bottleneck), identity added when s = 1 and widths match.

Feature taps (ReviewKD notes 1.6: 12, 16, 48, 160 + pooled 1280): the last block at each
resolution after the stem (``blocks[1]``, ``[2]``, ``[4]``, ``[6]``). Their outputs are linear (no
activation follows), so ``preact_relation = "identity"``. Module and parameter names equal the
community code's (``conv1.0.weight``, ``blocks.1.0.conv.3.weight``, ``conv2.*``,
``classifier.0.*``), so its checkpoints load as they are.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import MODELS, FeatureModel, Features
from xkd.models.cifar_resnet import init_weights

SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]
"""(expansion t or None = ``expand_ratio``, channels, repeats, stride of the first repeat)."""


class MobileNetV2KDParams(NumbersAreNumbers):
    """Parameters of the KD literature's CIFAR MobileNetV2."""

    model_config = ConfigDict(extra="forbid")
    width_mult: float = Field(0.5, gt=0, le=4, description="channel multiplier (0.5: the KD student)")
    expand_ratio: int = Field(6, ge=1, le=12, description="expansion t of the inverted residuals")


def conv_bn_relu(cin: int, cout: int, k: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3, stride) -> linear projection (1x1), identity skip if possible."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        self.skip = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class MobileNetV2KD(FeatureModel):
    """The KD literature's CIFAR MobileNetV2 (see the module docstring)."""

    preact_relation = "identity"
    STAGE_BLOCKS = (1, 2, 4, 6)

    def __init__(self, num_classes: int = 100, in_channels: int = 3, width_mult: float = 0.5,
                 expand_ratio: int = 6) -> None:
        super().__init__()
        c = int(32 * width_mult)
        self.conv1 = conv_bn_relu(in_channels, c, 3, 2)
        self.blocks = nn.ModuleList()
        for t, ch, n, s in SETTINGS:
            cout = int(ch * width_mult)
            units = []
            for i in range(n):
                units.append(InvertedResidual(c, cout, s if i == 0 else 1, t or expand_ratio))
                c = cout
            self.blocks.append(nn.Sequential(*units))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn_relu(c, last, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        init_weights(self)
        nn.init.normal_(self.classifier[0].weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier[0].bias)

    def features(self, x: torch.Tensor) -> Features:
        x = self.conv1(x)
        stages = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.STAGE_BLOCKS:
                stages.append(x)
        pooled = torch.flatten(self.pool(self.conv2(x)), 1)
        return Features(stages, list(stages), pooled, self.classifier(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return [self.blocks[i] for i in self.STAGE_BLOCKS]


@MODELS.register("mobilenetv2_kd", params=MobileNetV2KDParams, family="mobilenetv2_kd")
def mobilenetv2_kd(num_classes: int, in_channels: int = 3, image_size: int = 32,
                   width_mult: float = 0.5, expand_ratio: int = 6) -> MobileNetV2KD:
    """The KD literature's CIFAR MobileNetV2 (width 0.5, t = 6, stride-2 stem; CRD / ReviewKD student)."""
    return MobileNetV2KD(num_classes, in_channels, width_mult, expand_ratio)
