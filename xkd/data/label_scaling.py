"""Regression label normalisation: models train on labels min-max scaled to [0, 1] and every
reported number (MAE, RMSE) is in the dataset's original units.

cGAN-KD (Ding et al. 2023, section 5.2/5.5; seed_methods.md 5.2, 5.5) trains CcGANs and students
with MSE on labels normalised to [0, 1] and reports test MAE in original units. A
:class:`~xkd.data.base.DataBundle` carries ``label_offset`` and ``label_scale``; with
y_n = (y - offset) / scale, a prediction p_n maps back as p = p_n * scale + offset, so
MAE_original = scale * MAE_normalised.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from xkd.data.base import DataBundle, Sample


def to_normalised(values: torch.Tensor, bundle: DataBundle) -> torch.Tensor:
    """Original-unit labels -> the [0, 1] training space (identity for classification)."""
    if bundle.task != "regression":
        return values
    return (values.float() - bundle.label_offset) / bundle.label_scale


def to_original(values: torch.Tensor, bundle: DataBundle) -> torch.Tensor:
    """Normalised regression outputs -> original units (identity for classification)."""
    if bundle.task != "regression":
        return values
    return values.float() * bundle.label_scale + bundle.label_offset


class NormalisedLabels(Dataset):
    """A split whose regression ``label`` is returned normalised; everything else unchanged."""

    def __init__(self, dataset: Dataset, bundle: DataBundle) -> None:
        self.dataset = dataset
        self.offset = float(bundle.label_offset)
        self.scale = float(bundle.label_scale)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Sample:
        s = dict(self.dataset[i])
        s["label"] = (s["label"].float() - self.offset) / self.scale
        return s


def training_split(dataset: Dataset, bundle: DataBundle) -> Dataset:
    """``dataset`` as a model trains on it: labels normalised for regression, as-is otherwise."""
    if bundle.task != "regression" or (bundle.label_offset == 0.0 and bundle.label_scale == 1.0):
        return dataset
    return NormalisedLabels(dataset, bundle)
