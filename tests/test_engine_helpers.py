"""Tiny models, datasets and distillers shared by the engine tests (no tests in this file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from xkd.config import TrainConfig
from xkd.distill.base import DistillContext, Distiller, MethodParams, StepOutput
from xkd.models.base import Features, FeatureModel


class TinyNet(FeatureModel):
    """conv-BN-ReLU -> avgpool -> dropout -> linear: BatchNorm buffers and dropout RNG included."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> Features:
        pre = self.bn(self.conv(x))
        s = F.relu(pre)
        pooled = s.mean((2, 3))
        logits = self.fc(self.drop(pooled))
        return Features([s], [pre], pooled, logits)

    def stage_layers(self) -> list[nn.Module]:
        return [self.bn]


class TinyData(Dataset):
    """Sample dicts (8x8 images); class-dependent mean so it is learnable; a random horizontal flip
    drawn from torch's global RNG stands in for augmentation (``flip=False``: none, the same
    sample in every process and worker)."""

    def __init__(self, n: int = 48, num_classes: int = 3, seed: int = 0, regression: bool = False,
                 flip: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_classes
        self.images = torch.randn(n, 3, 8, 8, generator=g) + self.labels.view(-1, 1, 1, 1).float()
        self.regression = regression
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = self.images[i]
        if self.flip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        label = self.labels[i].float() if self.regression else self.labels[i]
        return {"image": img, "label": label, "index": torch.tensor(i)}


class TinyParams(MethodParams):
    pass


class TinyDistiller(Distiller):
    """CE on the student plus an auxiliary loss through an extra module (so extras get trained and
    checkpointed). ``nan_at=(epoch0, step)`` makes the ``aux`` loss NaN at that step of that epoch
    (``epoch0`` as the engine passes it, 0-indexed; ``step`` 1-based). ``epochs_seen`` records it."""

    needs_teacher = False

    def __init__(self, student: FeatureModel, nan_at: tuple[int, int] | None = None,
                 regression: bool = False) -> None:
        super().__init__(student, None, TinyParams(), DistillContext(example=torch.zeros(1, 3, 8, 8), num_classes=3))
        self.head = nn.Linear(student.fc.in_features, 1)
        self.nan_at = nan_at
        self.regression = regression
        self.calls: dict[int, int] = {}
        self.epochs_seen: list[int] = []

    def extra_modules(self) -> list[nn.Module]:
        return [self.head]

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        f = self.student.features(batch["image"])
        y = batch["label"]
        if self.regression:
            main = F.mse_loss(f.logits[:, 0], y.float())
        else:
            main = F.cross_entropy(f.logits, y)
        aux = 0.1 * (self.head(f.pooled)[:, 0] - y.float()).pow(2).mean()
        self.calls[epoch] = self.calls.get(epoch, 0) + 1
        self.epochs_seen.append(epoch)
        if self.nan_at == (epoch, self.calls[epoch]):
            aux = aux * float("nan")
        return StepOutput(f.logits, {"ce": main, "aux": aux}, {"batch": float(y.shape[0])})


def make(seed: int = 0, **kw) -> TinyDistiller:
    torch.manual_seed(seed)
    num_classes = 1 if kw.get("regression") else 3
    return TinyDistiller(TinyNet(num_classes), **kw)


def train_cfg(**kw) -> TrainConfig:
    base = {"epochs": 4, "batch_size": 8, "amp": False,
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_epochs": 0.5, "min_lr": 0.001}}
    base.update(kw)
    return TrainConfig.model_validate(base)


def state(d: Distiller) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in d.trainable_modules().state_dict().items()}
