"""A small MobileNetV2 for 32x32 inputs (Sandler et al., "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018, table 2).

Inverted residual block (paper table 1): 1x1 expansion conv-BN-ReLU6 (skipped when t = 1), 3x3
depthwise conv-BN-ReLU6 with stride s, 1x1 projection conv-BN with **no** activation (linear
bottleneck), plus the identity when stride is 1 and widths match. Channels are scaled by
``width_mult`` and rounded to multiples of 8. Width 0.5 and expansion 6 as the KD literature's
CIFAR student, but not that network: for the CRD / ReviewKD "MobileNetV2" rows use
``mobilenetv2_kd`` (:mod:`xkd.models.mobilenetv2_kd`: unrounded widths, stride-2 stem, ReLU).

CIFAR adaptation: the stem has stride 1 and the (t, c, n, s) table becomes
(1,16,1,1) (t,24,2,1) (t,32,3,2) (t,64,4,2) (t,96,3,1) (t,160,3,1) (t,320,1,1), so the network
has three resolutions (32, 16, 8 for a 32x32 input) like the CIFAR ResNets/WRNs it is paired with.
A 1x1 head conv (1280 channels, or 1280 * width_mult when width_mult > 1) - BN - ReLU6 follows.

Feature taps: ``stages[i]`` is the output of the last inverted-residual block at resolution i.
Those outputs are linear (no activation follows a bottleneck), hence ``preact_relation =
"identity"``: ``preact[i] is stages[i]`` and stages may be negative. ``pooled`` is the average of
the head activations (1280 wide). ``stage_layers()`` are the stage-ending block modules.

ReLU6 is written as ``6 - ReLU(6 - ReLU(x))`` with two ``nn.ReLU`` instances (exactly ReLU6) so
that Captum DeepLift, which only knows plain ReLU-like modules, applies its rescale rule. (The
form ``ReLU(x) - ReLU(x - 6)`` would be wrong for Captum: its hook on the first ReLU's input tensor
would also rescale the gradient of the second branch, which reads the same tensor.)
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import MODELS, FeatureModel, Features
from xkd.models.cifar_resnet import init_weights

SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 1), (None, 320, 1, 1)]
"""(expansion t or None = ``expand_ratio``, channels, repeats, stride of the first repeat)."""


class MobileNetV2Params(NumbersAreNumbers):
    """Parameters of the CIFAR MobileNetV2."""

    model_config = ConfigDict(extra="forbid")
    width_mult: float = Field(0.5, gt=0, le=4, description="channel multiplier (0.5 = KD-literature student)")
    expand_ratio: int = Field(6, ge=1, le=12, description="expansion t of the inverted residuals")


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to the nearest multiple of ``divisor``, never below 90% of ``v``."""
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class ReLU6(nn.Module):
    """min(max(x, 0), 6) as 6 - ReLU(6 - ReLU(x)): two nn.ReLU modules in a chain (DeepLift-able)."""

    def __init__(self) -> None:
        super().__init__()
        self.low = nn.ReLU()
        self.high = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 6.0 - self.high(6.0 - self.low(x))


def conv_bn_act(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (3x3, stride) -> linear projection (1x1), identity skip if possible."""

    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        self.stride = stride
        self.skip = stride == 1 and cin == cout
        layers: list[nn.Module] = [conv_bn_act(cin, hidden, 1, 1)] if t != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
                   conv_bn_act(hidden, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.skip else out


class MobileNetV2(FeatureModel):
    """CIFAR MobileNetV2 with three stages (see module docstring)."""

    preact_relation = "identity"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 0.5,
        expand_ratio: int = 6,
    ) -> None:
        super().__init__()
        c = make_divisible(32 * width_mult)
        self.stem = conv_bn_act(in_channels, c, 3, 1)
        blocks: list[InvertedResidual] = []
        for t, ch, n, s in SETTINGS:
            cout = make_divisible(ch * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(c, cout, s if i == 0 else 1, t or expand_ratio))
                c = cout
        self.blocks = nn.ModuleList(blocks)
        # a stage ends at the block before each stride-2 block, and at the last block
        self.stage_ends = [i for i in range(len(blocks) - 1) if blocks[i + 1].stride != 1]
        self.stage_ends.append(len(blocks) - 1)
        last = make_divisible(1280 * width_mult) if width_mult > 1.0 else 1280
        self.head = conv_bn_act(c, last, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        stages = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.stage_ends:
                stages.append(x)
        pooled = torch.flatten(self.pool(self.head(x)), 1)
        return Features(stages, list(stages), pooled, self.fc(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return [self.blocks[i] for i in self.stage_ends]


@MODELS.register("mobilenetv2", params=MobileNetV2Params, family="mobilenetv2")
def mobilenetv2(
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    width_mult: float = 0.5,
    expand_ratio: int = 6,
) -> MobileNetV2:
    """Small MobileNetV2 for 32x32 inputs (Sandler et al. 2018; CIFAR strides, width 0.5)."""
    return MobileNetV2(num_classes, in_channels, width_mult, expand_ratio)
