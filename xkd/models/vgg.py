"""VGG with batch normalisation for CIFAR (Simonyan & Zisserman, "Very Deep Convolutional Networks
for Large-Scale Image Recognition", ICLR 2015, table 1), in the variant of the KD literature
(CRD / RepDistiller, ReviewKD): the three fully connected layers are replaced by global average
pooling and one linear classifier on the 512-wide last block.

Five blocks of 3x3 conv (with bias) - BN - ReLU layers; a 2x2 max-pool follows blocks 0, 1 and 2.
Configurations (convs per block): ``vgg8`` 1,1,1,1,1 (the KD literature's small "S" net), ``vgg11``
1,1,2,2,2 (A), ``vgg13`` 2,2,2,2,2 (B), ``vgg16`` 2,2,3,3,3 (D), ``vgg19`` 2,2,4,4,4 (E); widths
64, 128, 256, 512, 512. The pool between blocks 3 and 4 is applied only when block 3's map is
wider than 4 px, so a 32 px input keeps blocks 3 and 4 at 4x4 (as the KD literature's CIFAR code,
which pools there at 64 px) and larger inputs are still reduced.

Feature taps (ReviewKD notes 1.5/1.6: VGG8 student levels 128, 256, 512, 512 + pooled 512): blocks
1-4. ``preact[i]`` is block i+1's last BN output, ``stages[i] = relu(preact[i])``; block 0 (the
stem) is not a stage. Every ReLU is its own ``nn.ReLU``; a block's final ReLU (``relu1..relu4``)
is the stage layer. Module and parameter names equal the community code's (``block0.0.weight``
conv, ``block0.1.*`` BN, ..., ``classifier.*``), so RepDistiller checkpoints load as they are.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import MODELS, FeatureModel, Features
from xkd.models.cifar_resnet import init_weights

CONFIGS: dict[str, list[int]] = {
    "vgg8": [1, 1, 1, 1, 1],
    "vgg11": [1, 1, 2, 2, 2],
    "vgg13": [2, 2, 2, 2, 2],
    "vgg16": [2, 2, 3, 3, 3],
    "vgg19": [2, 2, 4, 4, 4],
}
"""Convolutions per block (VGG paper table 1: A = 11, B = 13, D = 16, E = 19 weight layers)."""
WIDTHS = (64, 128, 256, 512, 512)


class VGGParams(NumbersAreNumbers):
    """VGG takes no extra parameters (unknown keys are rejected)."""

    model_config = ConfigDict(extra="forbid")


def make_block(cin: int, cout: int, n: int) -> nn.Sequential:
    """``n`` x (conv3x3 - BN - ReLU) without the final ReLU (it is applied outside the block)."""
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout)]
        if i < n - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VGG(FeatureModel):
    """CIFAR VGG-BN with global pooling and one linear layer (see the module docstring)."""

    preact_relation = "relu"

    def __init__(self, convs: list[int], num_classes: int = 100, in_channels: int = 3) -> None:
        super().__init__()
        cins = (in_channels,) + WIDTHS[:-1]
        for i, (cin, cout, n) in enumerate(zip(cins, WIDTHS, convs)):
            setattr(self, f"block{i}", make_block(cin, cout, n))
            setattr(self, f"relu{i}", nn.ReLU())
        self.pool0 = nn.MaxPool2d(2, 2)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.pool3 = nn.MaxPool2d(2, 2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(WIDTHS[-1], num_classes)
        init_weights(self)  # Kaiming fan-out convs (as the reference); zero conv biases, N(0, 0.01) head
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def blocks(self) -> list[nn.Sequential]:
        return [getattr(self, f"block{i}") for i in range(5)]

    def features(self, x: torch.Tensor) -> Features:
        x = self.pool0(self.relu0(self.block0(x)))
        stages, preact = [], []
        for i in range(1, 5):
            if i == 4 and x.shape[-2] > 4:
                x = self.pool3(x)
            pre = getattr(self, f"block{i}")(x)
            x = getattr(self, f"relu{i}")(pre)
            preact.append(pre)
            stages.append(x)
            if i < 3:
                x = getattr(self, f"pool{i}")(x)
        pooled = torch.flatten(self.pool4(x), 1)
        return Features(stages, preact, pooled, self.classifier(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return [getattr(self, f"relu{i}") for i in range(1, 5)]


def _register(name: str, convs: list[int]) -> None:
    def factory(num_classes: int, in_channels: int = 3, image_size: int = 32) -> VGG:
        # image_size is accepted for the uniform factory signature; any size >= 16 works.
        return VGG(convs, num_classes=num_classes, in_channels=in_channels)

    factory.__doc__ = f"CIFAR {name.upper()} with BN (convs per block {convs}; Simonyan & Zisserman 2015)"
    MODELS.register(name, params=VGGParams, family="vgg")(factory)


for _name, _convs in CONFIGS.items():
    _register(_name, _convs)
