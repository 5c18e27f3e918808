"""The explainer contract (DESIGN section 3.3).

``build(method, model, **params)`` returns an :class:`Explainer` whose ``explain(x, target)``
gives non-negative (B,1,H,W) float32 maps at input resolution, detached. Every method wraps
Captum; none hand-writes gradient code.
"""

from __future__ import annotations

from xkd.registry import Registry

EXPLAINERS: Registry["Explainer"] = Registry("explainer")  # noqa: F821 - defined in explainers.py
TARGET_RULES = ("label", "teacher_top1", "predicted")
