"""The metric contract (DESIGN section 7): one registry, one call convention, one result type.

Every metric is registered in :data:`METRICS` with metadata ``category`` (``faithfulness``,
``localisation``, ``alignment``, ``sanity`` or ``prediction``), ``higher_is_better`` (Quantus'
score direction), ``needs`` (input names that must be present), ``optional`` (inputs used when
present) and ``random`` (whether it draws from a ``torch.Generator``).

``METRICS.build(name, **params)`` validates the parameters (pydantic, extra fields forbidden) and
returns a :class:`Metric`; ``metric.compute(**inputs)`` returns a :class:`MetricResult` with one
value per sample. A report loops with :func:`run_metrics`, which skips metrics whose needs are
absent and says why.

Input names (all tensors batched over N samples):

- ``model``: ``nn.Module`` mapping ``x`` to logits (N, K)
- ``x``: images (N, C, H, W), in the space the model expects (normalised)
- ``attribution``: the map under evaluation (N, 1, H, W)
- ``target``: class explained (N,) long; default: the model's top-1 on clean ``x`` (RISE)
- ``mask``: ground-truth object mask (N, 1, H, W), 0/1
- ``second_map``: the reference map to align with (the teacher's), (N, 1, H, W)
- ``logits``: logits of the evaluated model (the student), (N, K)
- ``second_logits``: logits of the reference model (the teacher), (N, K)
- ``explainer``: callable ``(x, target) -> (N, 1, H, W)`` or an object with ``.explain``
- ``explainer_factory``: callable ``model -> explainer`` (model-randomisation test)
- ``generator``: ``torch.Generator``; default: a fresh one seeded with the metric's ``seed``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from pydantic import ConfigDict, Field, ValidationError

from xkd.config.schema import NumbersAreNumbers
from xkd.errors import ConfigError, UserError
from xkd.registry import Registry

CATEGORIES = ("faithfulness", "localisation", "alignment", "sanity", "prediction")
INPUT_NAMES = (
    "model", "x", "attribution", "target", "mask", "second_map", "logits", "second_logits",
    "explainer", "explainer_factory", "generator",
)


class MetricParams(NumbersAreNumbers):
    """Base of every metric's parameters (unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid")


class RandomParams(MetricParams):
    """Parameters of a metric that draws random numbers."""

    seed: int = Field(0, description="seed of the generator made when none is passed")


@dataclass
class MetricResult:
    """Per-sample values (N,) float64 on the CPU, optional curves and extra per-sample tensors.

    ``curves`` is (N, P) with abscissae ``curve_x`` (P,), e.g. a deletion curve. ``extras`` holds
    per-sample tensors (flags such as ``empty_mask``, other curves); ``info`` holds settings.
    NaN values mark undefined samples; :attr:`n_nan` counts them.
    """

    values: torch.Tensor
    curves: torch.Tensor | None = None
    curve_x: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_nan(self) -> int:
        return int(torch.isnan(self.values).sum())

    def mean(self) -> float:
        """Mean over samples, ignoring NaN (NaN when every sample is NaN)."""
        return float(torch.nanmean(self.values)) if self.values.numel() else float("nan")


@dataclass(frozen=True)
class Metric:
    """A configured metric: metadata, validated parameters and the function that computes it."""

    name: str
    category: str
    higher_is_better: bool
    needs: tuple[str, ...]
    optional: tuple[str, ...]
    random: bool
    description: str
    params: MetricParams
    fn: Callable[..., MetricResult]

    def missing(self, inputs: dict[str, Any]) -> list[str]:
        """Names in ``needs`` that are absent (or None) in ``inputs``."""
        return [k for k in self.needs if inputs.get(k) is None]

    def compute(self, **inputs: Any) -> MetricResult:
        """Compute per-sample values; unknown input names are ignored."""
        miss = self.missing(inputs)
        if miss:
            raise UserError(f"metric '{self.name}' needs inputs {miss}; given {sorted(inputs)}")
        kw = {k: inputs[k] for k in self.needs}
        kw.update({k: inputs[k] for k in self.optional if inputs.get(k) is not None})
        p = self.params.model_dump()
        if self.random:
            seed = p.pop("seed")
            if kw.get("generator") is None:
                kw["generator"] = torch.Generator().manual_seed(seed)
        return self.fn(**kw, **p)


METRICS: Registry[Metric] = Registry("metric")


def register_metric(
    name: str,
    fn: Callable[..., MetricResult],
    params: type[MetricParams],
    *,
    category: str,
    higher_is_better: bool,
    needs: tuple[str, ...],
    description: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Register ``fn`` as metric ``name``; ``fn(**inputs, **params)`` returns a MetricResult."""
    if category not in CATEGORIES:
        raise ValueError(f"metric '{name}': category '{category}' not in {CATEGORIES}")
    random = issubclass(params, RandomParams)
    if random:
        optional = tuple(optional) + ("generator",)

    def factory(**kw: Any) -> Metric:
        try:
            p = params(**kw)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(v) for v in err["loc"])
            where = f"metrics.{name}.{loc}" if loc else f"metrics.{name}"
            raise ConfigError(where, err["msg"]) from None
        return Metric(name, category, higher_is_better, tuple(needs), tuple(optional), random,
                      description, p, fn)

    factory.__doc__ = description
    METRICS.register(
        name, params=params, description=description, category=category,
        higher_is_better=higher_is_better, needs=tuple(needs), optional=tuple(optional),
        random=random,
    )(factory)


def list_metrics(category: str | None = None) -> list[dict[str, Any]]:
    """Metadata of the registered metrics (optionally of one category), sorted by name."""
    out = []
    for e in METRICS.entries():
        if category is None or e.meta["category"] == category:
            out.append({"name": e.name, "description": e.description, **e.meta})
    return out


def run_metrics(
    inputs: dict[str, Any],
    names: Iterable[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, MetricResult], dict[str, str]]:
    """Compute the metrics ``names`` (default: all) whose needs are in ``inputs``.

    Returns ``(results, skipped)``; ``skipped`` maps a metric name to the reason it was skipped.
    ``params`` maps a metric name to its parameters. Random metrics get a fresh generator seeded
    from their ``seed`` parameter unless ``inputs['generator']`` is given, so results do not
    depend on the order in which metrics run.
    """
    params = params or {}
    for name in params:
        METRICS.entry(name, path="metrics")  # raises UnknownNameError listing the allowed names
    results: dict[str, MetricResult] = {}
    skipped: dict[str, str] = {}
    for name in (METRICS.names() if names is None else list(names)):
        metric = METRICS.build(name, **params.get(name, {}))
        miss = metric.missing(inputs)
        if miss:
            skipped[name] = f"missing inputs: {', '.join(miss)}"
            continue
        results[name] = metric.compute(**inputs)
    return results, skipped

