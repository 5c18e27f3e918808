"""ShuffleNet V1 for CIFAR (Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient
Convolutional Neural Network for Mobile Devices", CVPR 2018), as the KD literature's CIFAR student
(CRD / RepDistiller, ReviewKD: groups g = 3, stage widths 240, 480, 960, 4 + 8 + 4 units).

ShuffleNet unit (paper fig. 2b/2c): 1x1 group conv (g groups; 1 group when the unit's input is the
24-channel stem, paper sec. 3.3) - BN - ReLU - channel shuffle (fig. 1) - 3x3 depthwise conv
(stride s) - BN - 1x1 group conv - BN; bottleneck width = output width / 4. Stride 1: identity
shortcut added; stride 2 (the first unit of each stage): 3x3 average pool (stride 2) of the input
concatenated, so the residual branch outputs ``out - in`` channels. A ReLU follows the sum/concat.
CIFAR adaptation (as in the KD literature): a 1x1, 24-channel stem with stride 1 and no max-pool,
so a 32 px input gives stages at 16, 8, 4; global average pooling and one linear layer.

Feature taps (ReviewKD notes 1.6: 240, 480, 960 + pooled 960): ``preact[i]`` is the last unit's
sum (or concat) before its final ReLU, ``stages[i] = relu(preact[i])``. Module and parameter names
equal the community code's (``layer1.0.conv1.weight`` ..., ``linear.*``), so its checkpoints load
as they are. Each ReLU is its own ``nn.ReLU``; a unit's final ReLU is ``relu_out``.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.errors import ConfigError
from xkd.models.base import FeatureModel, Features, MODELS, run_stages, stage_activations
from xkd.models.cifar_resnet import init_weights


class ShuffleNetV1Params(NumbersAreNumbers):
    """Parameters of ShuffleNet V1 (defaults: the KD literature's g = 3 network)."""

    model_config = ConfigDict(extra="forbid")
    groups: int = Field(3, ge=1, le=8, description="groups of the 1x1 convs (paper table 1: 1, 2, 3, 4, 8)")
    widths: tuple[int, int, int] = Field((240, 480, 960), description="output channels of stages 2-4")
    blocks: tuple[int, int, int] = Field((4, 8, 4), description="units per stage")


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, g*n, H, W) -> view (B, g, n, H, W) -> transpose -> flatten (ShuffleNet fig. 1c)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Shuffle(nn.Module):
    """Channel shuffle as a module (no parameters)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)


class Bottleneck(nn.Module):
    """One ShuffleNet unit (see the module docstring)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 4
        g = 1 if cin == 24 else groups
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.shuffle1 = Shuffle(g)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu_out = nn.ReLU()

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle1(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return torch.cat([out, res], 1) if self.stride == 2 else out + res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_out(self.preact(x))


class ShuffleNetV1(FeatureModel):
    """CIFAR ShuffleNet V1 (see the module docstring)."""

    preact_relation = "relu"

    def __init__(self, num_classes: int = 100, in_channels: int = 3, groups: int = 3,
                 widths: tuple[int, int, int] = (240, 480, 960),
                 blocks: tuple[int, int, int] = (4, 8, 4)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.relu = nn.ReLU()
        cin = 24
        for k, (cout, n) in enumerate(zip(widths, blocks), start=1):
            units = []
            for i in range(n):
                # a stride-2 unit concatenates its pooled input: the branch makes the remainder
                units.append(Bottleneck(cin, cout - cin if i == 0 else cout, 2 if i == 0 else 1, groups))
                cin = cout
            setattr(self, f"layer{k}", nn.Sequential(*units))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[-1], num_classes)
        init_weights(self)

    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def features(self, x: torch.Tensor) -> Features:
        x = self.relu(self.bn1(self.conv1(x)))
        x, stages, preact = run_stages(x, self.layers())
        pooled = torch.flatten(self.pool(x), 1)
        return Features(stages, preact, pooled, self.linear(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return stage_activations(self.layers())


@MODELS.register("shufflenetv1", params=ShuffleNetV1Params, family="shufflenetv1")
def shufflenetv1(num_classes: int, in_channels: int = 3, image_size: int = 32, groups: int = 3,
                 widths: tuple[int, int, int] = (240, 480, 960),
                 blocks: tuple[int, int, int] = (4, 8, 4)) -> ShuffleNetV1:
    """CIFAR ShuffleNet V1 (g = 3, widths 240/480/960; Zhang et al. 2018)."""
    try:
        return ShuffleNetV1(num_classes, in_channels, groups, tuple(widths), tuple(blocks))
    except ValueError as e:  # a group conv whose channels are not divisible by its groups
        raise ConfigError("params", f"groups={groups} does not fit widths={tuple(widths)}: {e}") from None
