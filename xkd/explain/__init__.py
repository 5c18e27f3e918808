"""Captum explainers behind one interface, target rules and the on-disk saliency cache."""

from xkd.explain.base import EXPLAINERS, TARGET_RULES
from xkd.explain.explainers import Explainer
from xkd.explain.factory import build, build_from_config, list_explainers
from xkd.explain.targets import resolve_targets
from xkd.explain.cache import SaliencyCache, load_existing, teacher_hash
from xkd.explain.video import VIDEO_METHODS, explain_video

__all__ = [
    "EXPLAINERS", "TARGET_RULES", "Explainer", "build", "build_from_config", "list_explainers",
    "resolve_targets", "SaliencyCache", "load_existing", "teacher_hash", "VIDEO_METHODS", "explain_video",
]

from xkd.registry import import_members  # noqa: E402

import_members(__name__)  # a new explainer file registers itself
