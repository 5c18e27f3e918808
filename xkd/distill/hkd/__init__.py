"""HKD: holistic knowledge distillation (Zhou et al., 2021): ``graph`` (kNN graph + graph conv),
``memory`` (per-sample memory banks), ``method`` (the registered distiller)."""

from xkd.distill.hkd.memory import dataset_labels
from xkd.distill.hkd.method import HKDDistiller, HKDParams

__all__ = ["HKDDistiller", "HKDParams", "dataset_labels"]
