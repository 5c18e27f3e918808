"""ReviewKD (Chen et al., CVPR 2021) with optional teacher-saliency weighting (DESIGN 3.5):
``abf`` (attention-based fusion chain), ``weights`` (saliency -> per-level weights), ``method``
(the registered distiller)."""

from xkd.distill.reviewkd.method import ExplainerOverride, ReviewKDDistiller, ReviewKDParams

__all__ = ["ExplainerOverride", "ReviewKDDistiller", "ReviewKDParams"]
