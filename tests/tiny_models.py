"""Tiny two-stage FeatureModels shared by the explainer and saliency-cache tests."""

from __future__ import annotations

import torch
from torch import nn

from xkd.models.base import Features, FeatureModel


class TwoStage(FeatureModel):
    """conv(-BN)-ReLU at full size, conv(-BN)-ReLU at half size, mean pool, linear head."""

    def __init__(self, in_ch: int = 3, classes: int = 5, widths: tuple[int, int] = (8, 16),
                 batchnorm: bool = True) -> None:
        super().__init__()
        a, b = widths

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            bn = [nn.BatchNorm2d(cout)] if batchnorm else []
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), *bn, nn.ReLU())

        self.stage1 = block(in_ch, a, 1)
        self.stage2 = block(a, b, 2)
        self.fc = nn.Linear(b, classes)

    def features(self, x: torch.Tensor) -> Features:
        a = self.stage1(x)
        b = self.stage2(a)
        p = b.mean((2, 3))
        return Features([a, b], [a, b], p, self.fc(p))

    def stage_layers(self) -> list[nn.Module]:
        return [self.stage1, self.stage2]
