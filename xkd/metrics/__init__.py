"""Batched explanation metrics (DESIGN section 7; reference/xai_metrics.md).

``METRICS`` holds every metric with its metadata; ``list_metrics()`` describes them;
``run_metrics(inputs)`` computes those whose inputs are present and says why the others were
skipped. The functions can also be called directly. Inside ``with shared_forwards():`` metrics
share the forwards of coinciding inputs (same model, images, order, fill and step).
"""

from xkd.metrics.base import (
    CATEGORIES, INPUT_NAMES, METRICS, Metric, MetricParams, MetricResult, list_metrics,
    register_metric, run_metrics,
)
from xkd.metrics.faithfulness import deletion, deletion_insertion, faithfulness_correlation, insertion
from xkd.metrics.region import aopc, aopc_lerf, aopc_morf
from xkd.metrics.robustness import explanation_function, infidelity, max_sensitivity
from xkd.metrics.road import linear_impute, noisy_linear_impute, road, road_lerf, road_morf
from xkd.metrics.localisation import (
    energy_pointing_game, pointing_game, relevance_mass_accuracy, relevance_rank_accuracy,
    top_k_intersection,
)
from xkd.metrics.alignment import cosine, kendall, kendall_tau_b, spearman, ssim, ssim_maps, topk_iou
from xkd.metrics.prediction import agreement, kl_divergence
from xkd.metrics.sanity import model_randomisation, parameter_layers, randomise_layer_
from xkd.metrics.controls import control_maps, random_attribution, uniform_attribution
from xkd.metrics.shared import ForwardCache, shared_forwards

__all__ = [
    "CATEGORIES", "INPUT_NAMES", "METRICS", "Metric", "MetricParams", "MetricResult",
    "list_metrics", "register_metric", "run_metrics",
    "deletion", "deletion_insertion", "insertion", "faithfulness_correlation",
    "aopc", "aopc_morf", "aopc_lerf", "infidelity", "max_sensitivity", "explanation_function",
    "road", "road_morf", "road_lerf", "linear_impute", "noisy_linear_impute",
    "pointing_game", "energy_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
    "top_k_intersection", "cosine", "spearman", "kendall", "kendall_tau_b", "ssim", "ssim_maps",
    "topk_iou", "agreement", "kl_divergence", "model_randomisation", "parameter_layers",
    "randomise_layer_", "control_maps", "random_attribution", "uniform_attribution",
    "ForwardCache", "shared_forwards",
]

from xkd.registry import import_members  # noqa: E402

import_members(__name__)  # a new metric file registers itself
