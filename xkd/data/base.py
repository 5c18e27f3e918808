"""The data contract: sample dicts and the :class:`DataBundle` (DESIGN section 3.1).

A sample is a dict with ``image`` (C,H,W float, normalised), ``label`` (long for classification,
float for regression), ``index`` (position in its split) and, where present, ``mask`` (1,H,W float
in {0,1}) and ``saliency`` (1,H,W float). A DataLoader collates them into the batch dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from xkd.registry import Registry

Sample = dict[str, torch.Tensor]
Task = Literal["classification", "regression"]

DATASETS: Registry["DataBundle"] = Registry("dataset")
"""Dataset factories: ``factory(params, cfg, seed) -> DataBundle``, called by
:func:`xkd.data.build_data` with ``params`` validated by the pydantic model registered with the
factory (``DATASETS.register(name, params=Model)``), ``cfg`` the ``DataConfig`` (root, download,
augment) and ``seed`` the data seed. Meta ``content_from_root=True`` adds ``cfg.root`` to the
bundle identity (datasets whose content is whatever the folder holds)."""


@dataclass
class DataBundle:
    """Splits and metadata of one dataset.

    ``train``/``val``/``test`` return un-augmented, normalised samples; ``train_transform`` is the
    joint geometric augmentation (a torchvision.transforms.v2 callable over image/mask/saliency)
    that :class:`xkd.data.transforms.JointAugment` applies. ``extra_tests`` holds further named
    test sets (e.g. ``test_decoy_shuffled``) evaluated like ``test``.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    task: Task = "classification"
    has_masks: bool = False
    in_channels: int = 3
    image_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    train_transform: Any = None
    extra_tests: dict[str, Dataset] = field(default_factory=dict)
    class_names: list[str] | None = None
    identity: str = ""
    """A string identifying the data content (name + params + seed): part of saliency-cache keys."""
    label_offset: float = 0.0
    label_scale: float = 1.0
    """Regression: models train on ``(y - label_offset) / label_scale`` (min-max to [0, 1], as in
    cGAN-KD, Ding et al. 2023, section 5.2); splits keep original units and
    :func:`xkd.data.label_scaling.to_original` maps predictions back for MAE/RMSE."""
    modalities: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Per-sample shape of every input modality key of a sample (e.g. ``{"video": (3,T,H,W),
    "image": (3,H,W), "audio": (1,M,M)}``); empty for image-only datasets, which means
    ``{"image": (in_channels, image_size, image_size)}`` (see :meth:`input_shapes`)."""

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """``modalities``, or ``{"image": (C,H,W)}`` for an image-only dataset."""
        if self.modalities:
            return dict(self.modalities)
        return {"image": (self.in_channels, self.image_size, self.image_size)}

    def test_sets(self) -> dict[str, Dataset]:
        """All test sets by name: ``test`` first, then ``extra_tests``."""
        return {"test": self.test, **self.extra_tests}


def list_datasets() -> list[str]:
    """Every registered dataset name."""
    import xkd.data  # noqa: F401  (registers built-ins)

    return DATASETS.names()
