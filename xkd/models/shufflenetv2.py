"""ShuffleNet V2 (1x) for CIFAR (Ma, Zhang, Zheng, Sun, "ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design", ECCV 2018, fig. 3c/3d and table 5), as the KD literature's CIFAR
student (CRD / RepDistiller, ReviewKD: stage widths 116, 232, 464, a 1024-wide 1x1 head).

Basic unit (fig. 3c): channel split into halves; the second half goes through 1x1 conv - BN - ReLU,
3x3 depthwise conv - BN, 1x1 conv - BN - ReLU; the halves are concatenated and channel-shuffled
(2 groups). Down-sampling unit (fig. 3d): both branches see the whole input; left: 3x3 depthwise
conv (stride 2) - BN, 1x1 conv - BN - ReLU; right: 1x1 conv - BN - ReLU, 3x3 depthwise (stride 2)
- BN, 1x1 conv - BN - ReLU; concatenated (each branch gives half of the output) and shuffled.
Each stage is one down-sampling unit followed by 3, 7, 3 basic units (4, 8, 4 in all, table 5).
CIFAR adaptation (as in the KD literature): a 1x1, 24-channel stem with stride 1 and no max-pool,
so a 32 px input gives stages at 16, 8, 4; a 1x1 conv - BN - ReLU to 1024 channels, global average
pooling and one linear layer.

Feature taps (ReviewKD notes 1.6: 116, 232, 464 + pooled 1024). In a basic unit the identity half
is already non-negative (every unit ends with ReLU outputs), so ``shuffle(cat(x1, relu(b)))`` equals
``relu(shuffle(cat(x1, b)))``: we define ``preact[i] = shuffle(cat(x1, b))`` of the stage's last unit
(``b`` the branch before its final ReLU) and ``stages[i] = relu(preact[i])``, the unit's output.
(The community code returns the same pre-activation without the final shuffle, i.e. in a different
channel order.) Module and parameter names equal the community code's (``layer1.0.conv1.weight``
..., ``conv2``, ``bn2``, ``linear``), so its checkpoints load as they are.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import ConfigDict, Field
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import FeatureModel, Features, MODELS, run_stages, stage_activations
from xkd.models.cifar_resnet import init_weights
from xkd.models.shufflenetv1 import channel_shuffle


PosInt = Annotated[int, Field(ge=1)]
EvenInt = Annotated[int, Field(ge=2, multiple_of=2)]


class ShuffleNetV2Params(NumbersAreNumbers):
    """Parameters of ShuffleNet V2 (defaults: the 1x network of the KD literature)."""

    model_config = ConfigDict(extra="forbid")
    widths: tuple[EvenInt, EvenInt, EvenInt, PosInt] = Field(
        (116, 232, 464, 1024), description="stage widths and head width (table 5: 0.5x 48/96/192/1024)")
    blocks: tuple[PosInt, PosInt, PosInt] = Field((3, 7, 3), description="basic units after each down unit")


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, depthwise: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=cin if depthwise else 1, bias=False),
            nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """Basic unit (fig. 3c) on ``channels`` inputs and outputs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels // 2
        self.conv1, self.bn1 = conv_bn(c, c, 1)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(c, c, 3, depthwise=True)
        self.conv3, self.bn3 = conv_bn(c, c, 1)
        self.relu_out = nn.ReLU()

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """shuffle(cat(identity half, branch before its ReLU)); relu of it is the unit's output."""
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        b = self.bn3(self.conv3(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x2)))))))
        return channel_shuffle(torch.cat([x1, b], 1), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_out(self.preact(x))


class DownBlock(nn.Module):
    """Spatial down-sampling unit (fig. 3d): ``cin`` -> ``cout`` channels, stride 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = conv_bn(cin, cin, 3, 2, depthwise=True)
        self.conv2, self.bn2 = conv_bn(cin, mid, 1)
        self.relu2 = nn.ReLU()
        self.conv3, self.bn3 = conv_bn(cin, mid, 1)
        self.relu3 = nn.ReLU()
        self.conv4, self.bn4 = conv_bn(mid, mid, 3, 2, depthwise=True)
        self.conv5, self.bn5 = conv_bn(mid, mid, 1)
        self.relu5 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu2(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu3(self.bn3(self.conv3(x)))
        right = self.relu5(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(FeatureModel):
    """CIFAR ShuffleNet V2 (see the module docstring)."""

    preact_relation = "relu"

    def __init__(self, num_classes: int = 100, in_channels: int = 3,
                 widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
                 blocks: tuple[int, int, int] = (3, 7, 3)) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, 24, 1)
        self.relu = nn.ReLU()
        cin = 24
        for k, (cout, n) in enumerate(zip(widths[:3], blocks), start=1):
            setattr(self, f"layer{k}", nn.Sequential(DownBlock(cin, cout), *[BasicBlock(cout) for _ in range(n)]))
            cin = cout
        self.conv2, self.bn2 = conv_bn(cin, widths[3], 1)
        self.relu_head = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[3], num_classes)
        init_weights(self)

    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def features(self, x: torch.Tensor) -> Features:
        x = self.relu(self.bn1(self.conv1(x)))
        x, stages, preact = run_stages(x, self.layers())
        head = self.relu_head(self.bn2(self.conv2(x)))
        pooled = torch.flatten(self.pool(head), 1)
        return Features(stages, preact, pooled, self.linear(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return stage_activations(self.layers())


@MODELS.register("shufflenetv2", params=ShuffleNetV2Params, family="shufflenetv2")
def shufflenetv2(num_classes: int, in_channels: int = 3, image_size: int = 32,
                 widths: tuple[int, int, int, int] = (116, 232, 464, 1024),
                 blocks: tuple[int, int, int] = (3, 7, 3)) -> ShuffleNetV2:
    """CIFAR ShuffleNet V2 1x (widths 116/232/464, head 1024; Ma et al. 2018)."""
    return ShuffleNetV2(num_classes, in_channels, tuple(widths), tuple(blocks))
