"""CCL: cross-modal compositional contrastive distillation (Chen et al., ICCV 2021): ``losses``
(composition head, contrastive and KL terms), ``method`` (the registered distiller)."""

from xkd.distill.ccl.method import CCLDistiller, CCLParams, TeacherRef

__all__ = ["CCLDistiller", "CCLParams", "TeacherRef"]
