"""FFSD: online feature fusion + self-distillation (Li et al., 2021): ``modules`` (the fusion and
auxiliary networks), ``method`` (the registered distiller)."""

from xkd.distill.ffsd.method import FFSDDistiller, FFSDParams

__all__ = ["FFSDDistiller", "FFSDParams"]
