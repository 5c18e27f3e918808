"""Wide ResNets (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016), CIFAR variant.

WRN-d-k: a 3x3 stem with 16 channels, three groups of n = (d-4)/6 pre-activation blocks with
widths 16k, 32k, 64k (strides 1, 2, 2), a final BN-ReLU, global average pooling and a linear layer.
A pre-activation block computes ``a = ReLU(BN(x))``,
``y = conv(drop(ReLU(BN(conv(a))))) + s`` with ``s = x`` when the shape is unchanged and
``s = conv1x1(a)`` otherwise (paper fig. 1c/1d, table 1).

Feature taps. A pre-activation group ends with a bare residual sum x_i; the activation that
follows it is the next group's first BN-ReLU (or the final BN-ReLU after group 3). As in the KD
literature's WRN taps (CRD/RepDistiller, ReviewKD teachers), we define

* ``preact[i] = BN(x_i)`` -- the BN that follows group i (pre-ReLU, may be negative),
* ``stages[i] = ReLU(BN(x_i))`` -- the activated map the next group actually consumes,

so ``stages[i] == relu(preact[i])`` exactly as for the CIFAR ResNets. The raw sum x_i itself is
not exposed. :meth:`WideResNet.stage_layers` returns those ReLU modules (the first block's
``relu1`` of groups 2 and 3, then the final ``relu``); each is its own ``nn.ReLU`` instance.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import MODELS, FeatureModel, Features
from xkd.models.cifar_resnet import init_weights


class WRNParams(NumbersAreNumbers):
    """Parameters of the WRN family."""

    model_config = ConfigDict(extra="forbid")
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="dropout between the two convs")


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-(dropout)-conv plus identity or 1x1-conv shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.equal = cin == cout and stride == 1
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.drop = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut: nn.Module = (
            nn.Identity() if self.equal else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(block output, BN(x), ReLU(BN(x)))."""
        pre = self.bn1(x)
        act = self.relu1(pre)
        out = self.conv2(self.drop(self.relu2(self.bn2(self.conv1(act)))))
        skip = x if self.equal else self.shortcut(act)
        return out + skip, pre, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x)[0]


class Group(nn.Module):
    """n pre-activation blocks; the first may change width and stride."""

    def __init__(self, cin: int, cout: int, n: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [
                PreActBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, drop_rate)
                for i in range(n)
            ]
        )

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(group output, BN and ReLU(BN) of the group *input* as seen by its first block)."""
        x, pre, act = self.layers[0].forward_parts(x)
        for layer in self.layers[1:]:
            x = layer(x)
        return x, pre, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_parts(x)[0]


class WideResNet(FeatureModel):
    """WRN-depth-widen for small images; any input size, any number of input channels."""

    preact_relation = "relu"
    COMMUNITY_KEYS = ((r"^(block\d)\.layer\.", r"\1.layers."), (r"\.convShortcut\.", ".shortcut."),
                      (r"^bn1\.", "bn."))
    """CRD / RepDistiller ``wrn.py`` names -> ours (``block1.layer.0.convShortcut`` ->
    ``block1.layers.0.shortcut``; the final ``bn1`` -> ``bn``)."""

    def __init__(
        self,
        depth: int,
        widen: int,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n+4 >= 10, got {depth}")
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.block1 = Group(w[0], w[1], n, 1, drop_rate)
        self.block2 = Group(w[1], w[2], n, 2, drop_rate)
        self.block3 = Group(w[2], w[3], n, 2, drop_rate)
        self.bn = nn.BatchNorm2d(w[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)
        init_weights(self)
        nn.init.zeros_(self.fc.bias)

    def features(self, x: torch.Tensor) -> Features:
        x = self.block1(self.conv1(x))
        stages, preact = [], []
        for group in (self.block2, self.block3):
            x, pre, act = group.forward_parts(x)
            preact.append(pre)
            stages.append(act)
        pre = self.bn(x)
        act = self.relu(pre)
        preact.append(pre)
        stages.append(act)
        pooled = torch.flatten(self.pool(act), 1)
        return Features(stages, preact, pooled, self.fc(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return [self.block2.layers[0].relu1, self.block3.layers[0].relu1, self.relu]


def _register(depth: int, widen: int) -> None:
    def factory(
        num_classes: int, in_channels: int = 3, image_size: int = 32, drop_rate: float = 0.0
    ) -> WideResNet:
        # image_size is accepted for the uniform factory signature; any size works.
        return WideResNet(depth, widen, num_classes, in_channels, drop_rate)

    factory.__doc__ = f"WRN-{depth}-{widen} (pre-activation; Zagoruyko & Komodakis 2016)"
    MODELS.register(f"wrn-{depth}-{widen}", params=WRNParams, family="wrn")(factory)


for _d, _k in ((16, 2), (40, 1), (40, 2)):
    _register(_d, _k)
