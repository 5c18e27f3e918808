"""Compute every applicable metric of :mod:`xkd.metrics` over a run's eval subset.

Rows (reference/xai_metrics.md §7.2):

- per (model, explainer) for the teacher and every student: faithfulness, localisation (when
  masks exist) and max-sensitivity (the explainer rebuilt on the model), each on the model's map
  for its OWN class and scored for that class (its top-1, or the label with
  ``evaluate.faithfulness_target: label``; DESIGN section 7);
- per (student, explainer): alignment of the student's map with the teacher's map of the same
  explainer, both for the teacher's top-1 class; per student: prediction agreement and
  KL(p_T || p_S) on the eval subset;
- the cascading randomisation sanity check on the teacher, per explainer, on the first
  ``sanity_samples`` samples;
- control rows ``control_random`` (i.i.d. U[0,1) map, seeded) and ``control_uniform`` (constant
  map): faithfulness and localisation on the reference model (the teacher), and alignment of the
  control map with the teacher's map per explainer (the floor).

Which row a metric gets follows from its declared ``needs``, so metrics added to the registry later
are picked up. Metrics that cannot apply (named inapplicability: no masks, no teacher, a regression
task, :class:`~xkd.errors.NotApplicable`) are listed in ``skipped`` with the reason; any other
exception while computing a row raises :class:`MetricFailed` (no report is written). Every metric
is timed (seconds, summed over its rows).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from xkd.config import ExplainConfig
from xkd.errors import NotApplicable, UserError
from xkd.metrics import METRICS, MetricResult, control_maps, shared_forwards
from xkd.report.loading import CONTROL_PREFIX, RunData

CONTROL_SEED = 0
CONTROLS = (f"{CONTROL_PREFIX}random", f"{CONTROL_PREFIX}uniform")


def report_params(h: int, w: int, std: list[float] | None) -> dict[str, dict[str, Any]]:
    """Light default metric parameters of the report (documented in every report).

    Chosen so that the quickstart's report takes seconds on a 2-core CPU: 16 perturbation steps, a
    4x4 region grid, few random draws; pixel tolerances scale with the image size; ROAD's noise is
    0.01 in [0, 1] pixel units (the reference's), i.e. ``0.01 / std_c`` in normalised units.
    """
    side = max(h, w)
    noise = [0.01 / s for s in std] if std else 0.01
    fast = {"max_batch": 512}
    return {
        "deletion": {"steps": 16, "baseline": "zero", **fast},
        "insertion": {"steps": 16, "baseline": "blur", **fast},
        "aopc_morf": {"patch_size": max(1, math.ceil(side / 4)), **fast},
        "aopc_lerf": {"patch_size": max(1, math.ceil(side / 4)), **fast},
        "faithfulness_correlation": {"runs": 16, "subset_fraction": 0.05, **fast},
        "infidelity": {"n_perturb_samples": 4, "noise_std": 0.2, **fast},
        "max_sensitivity": {"n_perturb_samples": 4, "radius": 0.02, "max_batch": 256},
        "road_morf": {"percentages": [0.1, 0.5, 0.9], "noise": noise, "tol": 1e-4, **fast},
        "road_lerf": {"percentages": [0.1, 0.5, 0.9], "noise": noise, "tol": 1e-4, **fast},
        "pointing_game": {"tolerance": round(15.0 * side / 224.0, 2)},
        "top_k_intersection": {"k_fraction": 0.05},
        "kendall_tau": {"size": 12},
        "topk_iou": {"k_fractions": [0.01, 0.02, 0.05, 0.1, 0.25, 0.5]},
        "model_randomisation": {"max_batch": 64},
    }


CLASS_RULES = {
    "predicted": "each model's own top-1 class on the clean image",
    "label": "the ground-truth label",
    "teacher_top1": "the teacher's top-1 class on the clean image, for teacher and student alike",
    "output": "the regression output",
}
"""How the report words each class rule (``Row.class_rule``, ``aggregates.json`` ``class_rule``)."""


def class_rule_text(rule: str) -> str:
    return f"`{rule}` ({CLASS_RULES[rule]})" if rule in CLASS_RULES else f"`{rule}`"


PERTURBATION_SAMPLES = 16
"""Default number of eval samples (the first ones) for the metrics that run a model on
perturbed inputs (faithfulness, robustness, sanity); map-only metrics use every sample."""
SANITY_SAMPLES = 8
"""Samples of the cascading-randomisation test (one explanation per sample and layer)."""


class MetricFailed(UserError):
    """A metric raised while computing one row: the report is not written (the previous one and
    the trained models are kept); one line names the metric, the model and the explainer."""

    exit_code = 1

    def __init__(self, metric: str, model: str, explainer: str | None, error: BaseException) -> None:
        self.metric, self.model, self.explainer = metric, model, explainer
        msg = " ".join(str(error).split())[:300]
        hint = ("; out of memory: try --device cpu or fewer --perturbation-samples"
                if isinstance(error, torch.OutOfMemoryError) else "")
        super().__init__(f"report: metric '{metric}' failed on model '{model}'"
                         + (f" (explainer {explainer})" if explainer else "")
                         + f": {type(error).__name__}: {msg}{hint}; the trained models are kept: "
                         f"rerun python -m xkd.report RUN (or leave the metric out with --metrics)")


@dataclass
class Row:
    """One metric computed for one model (or control) and explainer (None: map-independent)."""

    metric: str
    model: str
    explainer: str | None
    role: str
    result: MetricResult
    seconds: float
    class_rule: str = ""  # the class explained and scored: CLASS_RULES key ("" = none)


@dataclass
class Computed:
    rows: list[Row] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: str | None = None
    perturbation_samples: int = 0
    sanity_samples: int = 0
    device: str = "cpu"
    forwards: dict[str, Any] = field(default_factory=dict)
    """Images the metrics asked to forward (``requested``) and forwarded (``run``): coinciding
    forwards are shared (:func:`xkd.metrics.shared_forwards`)."""
    rows_by_rank: list[int] = field(default_factory=list)
    """Rows each DDP rank computed (one entry without a process group)."""

    def get(self, metric: str, model: str, explainer: str | None) -> Row | None:
        for r in self.rows:
            if (r.metric, r.model, r.explainer) == (metric, model, explainer):
                return r
        return None


def kind_of(needs: tuple[str, ...]) -> str:
    """The row plan of a metric from its declared inputs."""
    s = set(needs)
    if "second_map" in s:
        return "alignment"
    if "logits" in s or "second_logits" in s:
        return "prediction"
    if "explainer_factory" in s:
        return "sanity"
    if "explainer" in s:
        return "explainer"
    if "mask" in s:
        return "mask"
    if "model" in s:
        return "model"
    return "unknown"


def select_metrics(names: list[str] | None) -> list[str]:
    """Validated metric names (all registered when None), in registry order."""
    if names is None:
        return METRICS.names()
    out = []
    for n in names:
        METRICS.entry(n, path="--metrics")  # UnknownNameError lists the allowed names
        if n not in out:
            out.append(n)
    return out


def _explainer_factory(method: str, max_batch: int) -> Callable[[torch.nn.Module], Any]:
    from xkd.explain import build_from_config

    def make(model: torch.nn.Module) -> Any:
        return build_from_config(ExplainConfig(method=method, max_batch=max_batch), model,
                                 path="evaluate.explainers")
    return make


def _filter(name: str, params: dict[str, Any]) -> dict[str, Any]:
    entry = METRICS.entry(name)
    fields = getattr(entry.params, "model_fields", None)
    return {k: v for k, v in params.items() if fields is None or k in fields}


class _Runner:
    def __init__(self, data: RunData, names: list[str], device: torch.device, log: Any,
                 perturbation_samples: int | None) -> None:
        self.data, self.names, self.device, self.log = data, names, device, log
        h, w = data.inputs["images"].shape[2:] if data.inputs else (1, 1)
        base = report_params(int(h), int(w), (data.index or {}).get("std"))
        self.ref = data.teacher or (next(iter(data.arrays)) if data.arrays else None)
        self.k = data.n if not perturbation_samples else min(perturbation_samples, data.n)
        self.out = Computed(params={n: _filter(n, base.get(n, {})) for n in names},
                            reference=self.ref, device=str(device), perturbation_samples=self.k,
                            sanity_samples=min(SANITY_SAMPLES, self.k))
        self.rank, self.world = shard_of_this_process()
        self.slot = 0  # rows planned so far; slot s is computed by rank s % world
        self.events: list[tuple[int, int, str, Any]] = []  # (slot, order, 'row'|'skip', payload)

    def skip(self, metric: str, reason: str, model: str | None = None, slot: int | None = None) -> None:
        """List ``metric`` as skipped: a plan-level skip (every rank plans it; rank 0's is kept) at
        the current slot, or a row's own inapplicability at that row's ``slot``."""
        entry = {"metric": metric, "reason": reason}
        if model is not None:
            entry["model"] = model
        at, order = (self.slot, 0) if slot is None else (slot, 1)
        self.events.append((at, order, "skip", entry))

    def tensors(self) -> None:
        d, dev = self.data, self.device
        self.x = torch.from_numpy(d.inputs["images"]).float().to(dev)
        self.mask = torch.from_numpy(d.inputs["masks"]).float().to(dev) if d.has_masks else None
        self.own_targets = {n: torch.from_numpy(d.own(n)).long().to(dev) for n in d.arrays}
        g = torch.Generator().manual_seed(CONTROL_SEED)
        like = torch.zeros(self.x.shape[0], 1, *self.x.shape[2:])
        self.controls = {f"{CONTROL_PREFIX}{k}": v.to(dev) for k, v in control_maps(like, g).items()}

    def map(self, model: str, explainer: str) -> torch.Tensor:
        return torch.from_numpy(self.data.arrays[model][f"map_{explainer}"]).float().to(self.device)

    def logits(self, model: str) -> torch.Tensor:
        return torch.from_numpy(self.data.arrays[model]["logits"]).float()

    def own_map(self, model: str, explainer: str) -> torch.Tensor:
        """The model's map for the class it is scored for (``RunData.faithfulness_rule``)."""
        return torch.from_numpy(self.data.own(model, explainer)).float().to(self.device)

    def run(self, metric: str, row: str, expl: str | None, role: str, rule: str = "",
            **inputs: Any) -> None:
        slot, self.slot = self.slot, self.slot + 1
        if slot % self.world != self.rank:  # another rank computes this row (DDP)
            return
        m = METRICS.build(metric, **self.out.params.get(metric, {}))
        t0 = time.perf_counter()
        try:
            res = m.compute(**inputs)
        except NotApplicable as e:  # named inapplicability: listed with its reason
            msg = " ".join(str(e).split())[:200]
            # listed where the row would have stood
            self.skip(metric, f"not applicable{f' ({expl})' if expl else ''}: {msg}", model=row, slot=slot)
            self.log(f"[xkd.report] {metric} {row} {expl or ''}: not applicable: {msg}")
            return
        except Exception as e:  # a crash (bug, out of memory) fails the report, loudly
            raise MetricFailed(metric, row, expl, e) from e
        self.events.append((slot, 1, "row", Row(metric, row, expl, role, res, time.perf_counter() - t0, rule)))

    def finish(self, failure: UserError | None) -> None:
        """Rows and skips in planning order; under DDP every rank's share is gathered (one
        collective) and a failure on any rank fails the report on every rank."""
        events, failures = self.events, [str(failure) if failure else None]
        self.out.rows_by_rank = [sum(1 for e in events if e[2] == "row")]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            # plan-level skips (order 0) are the same on every rank: rank 0's are kept
            mine = [e for e in events if e[1] == 1 or self.rank == 0]
            dist.all_gather_object(gathered, (mine, failures[0]))
            events = [e for part, _ in gathered for e in part]
            self.out.rows_by_rank = [sum(1 for e in part if e[2] == "row") for part, _ in gathered]
            failures = [f for _, f in gathered]
        if failure is not None:
            raise failure
        others = [(r, f) for r, f in enumerate(failures) if f]
        if others:
            raise UserError(f"{others[0][1]} (on rank {others[0][0]})")
        for slot, order, kind, payload in sorted(events, key=lambda e: (e[0], e[1])):
            if kind == "row":
                self.out.rows.append(payload)
                self.out.seconds[payload.metric] = self.out.seconds.get(payload.metric, 0.0) + payload.seconds
            else:
                self.out.skipped.append(payload)

    def plan(self, metric: str) -> None:
        d = self.data
        needs = tuple(METRICS.entry(metric).meta.get("needs", ()))
        kind = kind_of(needs)
        if d.task != "classification":
            return self.skip(metric, f"{d.task} task: explanations and explanation metrics are "
                                     "exported for classification only")
        if not d.inputs:
            return self.skip(metric, "no image explanations in this run (a multi-modal run exports "
                                     "per-frame video explanations: explanations/video_index.json)")
        if kind in ("alignment", "prediction") and d.teacher is None:
            return self.skip(metric, "no teacher in this run to compare the students with")
        if kind == "mask" and not d.has_masks:
            return self.skip(metric, "the dataset has no ground-truth masks "
                                     "(explanations/inputs.npz has no 'masks')")
        if kind == "unknown":
            return self.skip(metric, f"needs inputs the report cannot provide: {list(needs)}")
        if kind == "prediction":
            for s in d.students:
                self.run(metric, s, None, "student", logits=self.logits(s),
                         second_logits=self.logits("teacher"))
        elif kind == "alignment":  # student and teacher maps for the shared (teacher's) class
            rule = d.alignment_rule
            for e in d.explainers:
                tmap = self.map("teacher", e)
                for s in d.students:
                    self.run(metric, s, e, "student", rule, attribution=self.map(s, e), second_map=tmap)
                for c, cmap in self.controls.items():
                    self.run(metric, c, e, "control", rule, attribution=cmap, second_map=tmap)
        elif kind == "sanity":
            self._sanity(metric)
        else:
            self._per_model(metric, kind)
        return None

    def _per_model(self, metric: str, kind: str) -> None:
        """Faithfulness ('model'), robustness ('explainer') and localisation ('mask') rows: each
        model's map for, and scored on, its own class (``RunData.faithfulness_rule``); the control
        maps on the reference model for its own class."""
        k = self.k if kind in ("model", "explainer") else self.data.n
        rule = self.data.faithfulness_rule
        base = {"x": self.x[:k], "mask": None if self.mask is None else self.mask[:k]}
        for e in self.data.explainers:
            for name in self.data.arrays:
                inputs = {**base, "target": self.own_targets[name][:k],
                          "attribution": self.own_map(name, e)[:k]}
                if kind in ("model", "explainer"):
                    inputs["model"] = self.data.model(name).to(self.device)
                if kind == "explainer":
                    inputs["explainer"] = _explainer_factory(e, self.data.cfg.explain.max_batch)(inputs["model"])
                self.run(metric, name, e, "teacher" if name == "teacher" else "student", rule, **inputs)
        for c, cmap in self.controls.items():
            if kind == "explainer":
                self.skip(metric, "a control map has no explainer to perturb", model=c)
                continue
            inputs = {**base, "target": self.own_targets[self.ref][:k], "attribution": cmap[:k]}
            if kind == "model":
                inputs["model"] = self.data.model(self.ref).to(self.device)
            self.run(metric, c, None, "control", rule, **inputs)

    def _sanity(self, metric: str) -> None:
        k = self.out.sanity_samples
        model = self.data.model(self.ref).to(self.device)
        for e in self.data.explainers:
            self.run(metric, self.ref, e, "teacher" if self.ref == "teacher" else "student",
                     self.data.faithfulness_rule, model=model, x=self.x[:k],
                     target=self.own_targets[self.ref][:k],
                     explainer_factory=_explainer_factory(e, self.data.cfg.explain.max_batch))
        for s in self.data.arrays:
            if s != self.ref:
                self.skip(metric, "computed on the reference model (the teacher) only, to keep the "
                                  "report light", model=s)


def compute_metrics(data: RunData, names: list[str] | None = None, device: str | torch.device = "cpu",
                    log: Any = print, perturbation_samples: int | None = PERTURBATION_SAMPLES
                    ) -> Computed:
    """Compute the metrics ``names`` (default: all registered) for every row that applies.

    ``perturbation_samples`` caps the samples of the metrics that run a model (the first ones of
    the eval subset); None or 0: all.
    """
    names = select_metrics(names)
    r = _Runner(data, names, torch.device(device), log, perturbation_samples)
    if data.inputs:
        r.tensors()
    failure: UserError | None = None
    with shared_forwards() as cache:  # one clean forward per (model, images), shared curve points
        try:
            for metric in names:
                t0 = time.perf_counter()
                before = len(r.events)
                r.plan(metric)
                n_rows = sum(1 for e in r.events[before:] if e[2] == "row")
                if n_rows:
                    log(f"[xkd.report] {metric}: {n_rows} rows, {time.perf_counter() - t0:.1f} s")
        except UserError as e:  # MetricFailed: the other ranks still meet at the gather
            failure = e
    r.finish(failure)
    r.out.forwards = cache.summary()
    return r.out


def shard_of_this_process() -> tuple[int, int]:
    """``(rank, world)`` of a running process group (every rank computes its share of the rows),
    else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
