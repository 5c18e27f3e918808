"""Datasets (built-in offline ones, torchvision wrappers, image folders) and joint transforms.

``build_data(cfg, seed, overrides)`` is the entry point; importing this package registers every
built-in dataset in :data:`DATASETS`.
"""

from xkd.data.base import DATASETS, DataBundle, Sample, list_datasets
from xkd.data.build import build_data, identity, validate_params
from xkd.data.tensors import TensorSplit
from xkd.data.transforms import BatchAugment, JointAugment, build_train_transform

from xkd.data import shapes, shapes_regression, digits, torchvision_sets, imagefolder, av_shapes  # noqa: E402,F401  isort: skip

__all__ = [
    "BatchAugment", "DATASETS", "DataBundle", "Sample", "TensorSplit", "build_data", "build_train_transform",
    "identity", "JointAugment", "list_datasets", "validate_params",
]
