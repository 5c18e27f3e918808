"""Small video students on (B,3,T,H,W) clips (DESIGN section 3.2; CCL's student, seed_methods.md 4.1).

* ``r2plus1d_tiny``: R(2+1)D (Tran et al., "A Closer Look at Spatiotemporal Convolutions for
  Action Recognition", CVPR 2018, sec. 3.5): every 3-D convolution t x k x k is factorised into a
  spatial 1 x k x k convolution to ``M`` channels, BN, ReLU, then a temporal t x 1 x 1
  convolution, with ``M`` chosen so the parameter count matches the full 3-D kernel (their eq. 1).
  A stem (spatial stride ``stem_stride``, 2 by default to keep CPU cost near ``frame_cnn``'s x3)
  and three residual stages (one BasicBlock each by default; spatial stride 2 in stages 2 and 3,
  temporal stride 1 so every stage keeps one map per frame), global average pooling, linear head.
* ``frame_cnn``: a small 2-D CNN applied to every frame (three conv-BN-ReLU stages), temporal and
  spatial average pooling, linear head (the "single frame + late fusion" baseline of Karpathy et
  al., CVPR 2014).

``features(x).stages`` are 5-D maps (B,C,T,h,w) after the stage's final ReLU, ``preact`` the same
maps before it (``preact_relation = "relu"``), ``pooled`` the (B,D) clip embedding. Any T >= 1.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.models.base import FeatureModel, Features, MODELS, run_stages, stage_activations
from xkd.models.cifar_resnet import init_weights


class FrameCNNParams(NumbersAreNumbers):
    """Widths of the three stages."""

    model_config = ConfigDict(extra="forbid")
    widths: tuple[int, int, int] = Field((16, 32, 64), description="channels of stages 1-3")


class R2Plus1dParams(FrameCNNParams):
    """Widths of the three stages and residual blocks per stage."""

    blocks: int = Field(1, ge=1, le=4, description="residual blocks per stage")
    stem_stride: int = Field(2, ge=1, le=4, description="spatial stride of the stem (2: stage 1 at H/2)")


class SpatialConv(nn.Conv2d):
    """A 1 x k x k convolution of (B,C,T,H,W) clips, run as a 2-D convolution of every frame."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = super().forward(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class TemporalConv(nn.Conv2d):
    """A k x 1 x 1 convolution of (B,C,T,H,W) clips, run as a (k,1) 2-D convolution over (T, H*W)
    (the same operation as Conv3d with that kernel, much faster on CPUs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        return super().forward(x.reshape(b, c, t, h * w)).reshape(b, -1, t, h, w)


class Conv2Plus1d(nn.Sequential):
    """Spatial 1xkxk conv -> BN -> ReLU -> temporal kx1x1 conv, with the intermediate width
    ``M = k^3 Cin Cout / (k^2 Cin + k Cout)`` of Tran et al. 2018 (eq. 1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, k: int = 3) -> None:
        mid = max(1, (k * k * k * cin * cout) // (k * k * cin + k * cout))
        super().__init__(
            SpatialConv(cin, mid, k, stride, k // 2, bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(),
            TemporalConv(mid, cout, (k, 1), 1, (k // 2, 0), bias=False),
        )


class Block2Plus1d(nn.Module):
    """Residual block: ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), convs factorised (2+1)D."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = Conv2Plus1d(cin, cout, stride)
        self.bn1 = nn.BatchNorm3d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = Conv2Plus1d(cout, cout)
        self.bn2 = nn.BatchNorm3d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(SpatialConv(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))
        self.relu_out = nn.ReLU()

    def preact(self, x: torch.Tensor) -> torch.Tensor:
        """The residual sum before the final ReLU."""
        return self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_out(self.preact(x))


class R2Plus1dTiny(FeatureModel):
    """Stem + three residual (2+1)D stages + global average pooling + linear head."""

    preact_relation = "relu"
    input_dims = 4

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64),
                 blocks: int = 1, stem_stride: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(Conv2Plus1d(in_channels, widths[0], stem_stride), nn.BatchNorm3d(widths[0]),
                                  nn.ReLU())
        self.stages = nn.ModuleList()
        cin = widths[0]
        for i, w in enumerate(widths):
            self.stages.append(nn.ModuleList(
                [Block2Plus1d(cin if b == 0 else w, w, (1 if i == 0 else 2) if b == 0 else 1)
                 for b in range(blocks)]))
            cin = w
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> Features:
        x = self.stem(x)
        x, stages, preact = run_stages(x, self.stages)
        pooled = torch.flatten(self.pool(x), 1)
        return Features(stages, preact, pooled, self.fc(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return stage_activations(self.stages)


class FrameCNN(FeatureModel):
    """A 2-D CNN per frame (three 3x3 conv-BN-ReLU stages, stride 2 in stages 2 and 3), then
    average pooling over time and space and a linear head."""

    preact_relation = "relu"
    input_dims = 4

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)
                 ) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.relus = nn.ModuleList()
        cin = in_channels
        for i, w in enumerate(widths):
            self.convs.append(nn.Sequential(SpatialConv(cin, w, 3, 1 if i == 0 else 2, 1, bias=False),
                                            nn.BatchNorm3d(w)))
            self.relus.append(nn.ReLU())
            cin = w
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> Features:
        stages, preact = [], []
        for conv, relu in zip(self.convs, self.relus):
            pre = conv(x)
            x = relu(pre)
            stages.append(x)
            preact.append(pre)
        pooled = torch.flatten(self.pool(x), 1)
        return Features(stages, preact, pooled, self.fc(pooled))

    def stage_layers(self) -> list[nn.Module]:
        return list(self.relus)


@MODELS.register("r2plus1d_tiny", params=R2Plus1dParams, family="video", input_dims=4)
def r2plus1d_tiny(num_classes: int, in_channels: int = 3, image_size: int = 32,
                  widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 1, stem_stride: int = 2
                  ) -> R2Plus1dTiny:
    """Factorised (2+1)D residual video network (Tran et al. 2018); any T, H, W."""
    return R2Plus1dTiny(num_classes, in_channels, tuple(widths), blocks, stem_stride)


@MODELS.register("frame_cnn", params=FrameCNNParams, family="video", input_dims=4)
def frame_cnn(num_classes: int, in_channels: int = 3, image_size: int = 32,
              widths: tuple[int, int, int] = (16, 32, 64)) -> FrameCNN:
    """Per-frame 2-D CNN + temporal average pooling; any T, H, W."""
    return FrameCNN(num_classes, in_channels, tuple(widths))
