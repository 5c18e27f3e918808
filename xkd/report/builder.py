"""``build_report(RUN)``: recompute the metrics from a run folder and write the report.

Writes ``RUN/metrics/`` (per-sample CSVs + ``aggregates.json``) and ``RUN/report/`` (``report.md``,
a self-contained ``report.html`` with base64 figures, ``figures/*.png``). Everything is built in a
temporary folder inside RUN and swapped in with ``os.replace`` once complete, so a failure leaves
the previous report and metrics untouched. Sections follow reference/xai_metrics.md §7.2.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from xkd import __version__, io
from xkd.report import figures as F
from xkd.report.compute import (CONTROL_SEED, PERTURBATION_SAMPLES, Computed, class_rule_text,
                                compute_metrics, select_metrics)
from xkd.report.document import Document
from xkd.report.loading import RunData, load_run
from xkd.report.records import write_records
from xkd.report.tables import (cost_table, metric_table, params_table, prediction_table,
                               weight_map_table)

Log = Callable[[str], Any]


ORDER = ("deletion", "insertion", "aopc_morf", "aopc_lerf", "road_morf", "road_lerf",
         "faithfulness_correlation", "infidelity", "max_sensitivity", "pointing_game",
         "energy_pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy",
         "top_k_intersection", "cosine", "spearman", "kendall_tau", "ssim", "topk_iou")


def _names(cat: str, agg: dict[str, Any]) -> list[str]:
    """Metrics of a category in the report's column order (unknown ones last, by name)."""
    names = [m for m, meta in agg["metrics"].items() if meta["category"] == cat]
    return sorted(names, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))


def _explainer_settings(data: RunData) -> list[str]:
    from xkd.explain import EXPLAINERS

    out = []
    for e in data.explainers:
        entry = EXPLAINERS.entry(e)
        p = entry.params().model_dump(mode="json") if entry.params is not None else {}
        out.append(f"`{e}`: " + (", ".join(f"{k}={v}" for k, v in p.items()) or "no parameters")
                   + f"; max_batch={data.cfg.explain.max_batch}")
    return out


def provenance(doc: Document, data: RunData, comp: Computed, subset: int | None) -> None:
    cfg, env, idx = data.cfg, data.env, data.index or {}
    doc.h("Provenance")
    lines = [f"run folder: `{data.root}`; experiment `{cfg.name}`, seed {env.get('seed', cfg.seed)}"
             + (" (smoke run)" if env.get("smoke") else ""),
             f"data: `{cfg.data.name}` {cfg.data.params or ''}; task {data.task}",
             f"eval subset: {data.n} samples of the `{idx.get('test_set', 'test')}` split "
             f"(seeded subset, seed {idx.get('subset_seed', '-')})"
             + (f", first {subset} kept by --subset" if subset else "")
             + f"; ground-truth masks: {'yes' if data.has_masks else 'no'}",
             "models: " + "; ".join(f"{n} ({m.role}, {m.config.name or m.config.factory}, "
                                      f"{m.metrics.get('method', '-')})" for n, m in data.models.items()),
             "versions: " + ", ".join(f"{k} {env[k]}" for k in ("xkd", "python", "torch", "torchvision",
                                                                  "captum", "numpy") if k in env)
             + f"; report built by xkd {__version__}",
             f"hardware: training device {env.get('device', '-')}, {env.get('cpu_threads', '-')} CPU "
             f"threads, {env.get('platform', '-')}; report metrics on {comp.device}; "
             f"git {env.get('git_commit', '-')}",
             f"deterministic mode: {cfg.deterministic}; AMP: {cfg.train.amp} ({cfg.train.amp_dtype}; "
             f"float16 on CUDA only); channels_last: {cfg.train.channels_last} (CUDA only)"]
    doc.items(lines)
    doc.h("Conventions", 3)
    doc.items([
        f"class explained and scored: faithfulness, robustness, localisation and sanity: "
        f"{class_rule_text(data.faithfulness_rule)}; alignment: student and teacher maps both for "
        f"{class_rule_text(data.alignment_rule)}; each metric table below says which"
        + ("" if "faithfulness_target_rule" in idx else "; this run was exported before per-model "
           "classes, so every map is for the alignment class (re-run to score each model for its own)"),
        "explainers (their defaults; channel pooling, sign and per-sample normalisation are the "
        "explainer parameters): " + "; ".join(_explainer_settings(data)),
        "output space: softmax probability of the target for deletion/insertion, AOPC and ROAD; "
        "logits for faithfulness correlation and infidelity (Quantus/Captum defaults)",
        "AUC: RISE normalised trapezoid over x in [0, 1] with the unperturbed point t = 0 included",
        "tie-breaking: stable sort, ties in row-major pixel order (perturbation orders); top-k and "
        "rank metrics score ties in expectation; Spearman uses average ranks",
        "alignment: student map vs the teacher map of the same explainer and target, at input "
        "resolution (Kendall tau-b and the pooled metrics on an average-pooled grid, see parameters)",
        f"samples: metrics that run a model on perturbed inputs (faithfulness, robustness) use the "
        f"first {comp.perturbation_samples} eval samples; the randomisation sanity check uses "
        f"{comp.sanity_samples} samples on the reference model `{comp.reference}` only; map-only "
        f"metrics (localisation, alignment, prediction) use all {data.n}",
        f"controls: `control_random` = i.i.d. U[0,1) map (torch generator seed {CONTROL_SEED}), "
        "`control_uniform` = constant map; evaluated on the reference model for faithfulness",
        "seeds: every random metric draws from its own torch.Generator seeded with its `seed` "
        "parameter (default 0); bootstrap CIs use numpy default_rng(0) per row",
        "aggregates: mean over non-NaN samples, 95% percentile-bootstrap CI, N valid samples "
        "(NaN counts shown when present)",
    ])


def class_line(results: list[dict[str, Any]], metrics: list[str]) -> str | None:
    """One line per metric table: the class each of its metrics explains and scores."""
    rules: dict[str, list[str]] = {}
    for m in metrics:
        for r in {r.get("class_rule", "") for r in results if r["metric"] == m} - {""}:
            rules.setdefault(r, []).append(m)
    if not rules:
        return None
    return "Class explained and scored: " + "; ".join(
        f"{', '.join(f'`{m}`' for m in ms)}: {class_rule_text(r)}" for r, ms in rules.items()) + "."


def _figures(doc: Document, data: RunData, comp: Computed, enabled: bool) -> None:
    if not enabled:
        doc.p("Figures are disabled (`report.figures: false` or `--no-figures`).")
        return
    for e in data.explainers:
        doc.figure(f"curves_{e}", F.curves(comp, e),
                   f"Deletion and insertion curves ({e}), mean and 95% band, controls dashed")
    for e in data.explainers:
        doc.figure(f"alignment_{e}", F.alignment(comp, e),
                   f"Per-sample alignment with the teacher ({e}): violin + box per student and control")
        doc.figure(f"topk_{e}", F.topk(comp, e), f"Top-k IoU with the teacher's map over k ({e})")
        doc.figure(f"examples_{e}", F.examples(data, comp, e),
                   f"Examples ({e}): fixed first samples and the best, median and worst by the "
                   "students' mean cosine alignment")
    for s in data.students:
        doc.figure(f"attention_{s}", F.attention(data, s),
                   f"ABF attention maps of `{s}` per fused stage (first samples): map 0 weighs the "
                   "stage's own feature, map 1 the residual from the deeper stage; each pair on its "
                   "own [min, max] scale, upsampled (nearest) to the image size; last column, where "
                   "present: the teacher map that weighted the review loss")
    doc.figure("sanity", F.sanity(comp), "Cascading model-parameter randomisation (teacher)")
    doc.figure("training", F.training(data), "Training curves (history.jsonl)")
    gan = data.folder.root / "cgan" / "samples.png"  # cGAN-KD: written by xkd.gan.training
    if gan.is_file():
        doc.figure("cgan_samples", gan.read_bytes(), "cGAN-KD: samples of the conditional GAN's EMA "
                   "generator, one row per class (classification) or per label (regression sweep)")


def compose(data: RunData, comp: Computed, agg: dict[str, Any], subset: int | None,
            figures: bool = True) -> Document:
    doc = Document(f"xkd report: {data.cfg.name}")
    doc.p(f"Built {time.strftime('%Y-%m-%d %H:%M:%S')} from `{data.root}` without retraining; "
          "per-sample values in `metrics/*.csv`, aggregates in `metrics/aggregates.json`.")
    provenance(doc, data, comp, subset)
    res = agg["results"]
    doc.h("Prediction fidelity")
    doc.table(prediction_table(data.models, res, data.task))
    wm = weight_map_table(data.models)
    if wm is not None:
        doc.h("Weighting maps", 3)
        doc.table(wm)
    sections = [("faithfulness", "Faithfulness", True), ("localisation", "Localisation", True),
                ("alignment", "Teacher-student alignment", True), ("sanity", "Sanity check", True)]
    for cat, title, by_ex in sections:
        t = metric_table(res, _names(cat, agg), "mean [95% bootstrap CI]; ↑/↓: direction; "
                         "colour: rank in the column, controls uncoloured", by_ex)
        if t is not None:
            doc.h(title)
            line = class_line(res, _names(cat, agg))
            if line:
                doc.p(line)
            doc.table(t)
    doc.h("Figures")
    t0 = time.perf_counter()
    _figures(doc, data, comp, figures)
    fig_seconds = time.perf_counter() - t0
    doc.h("Skipped (not applicable)")
    doc.items([f"`{s['metric']}`" + (f" ({s['model']})" if s.get("model") else "") + f": {s['reason']}"
               for s in agg["skipped"]] or ["nothing: every selected metric applied"])
    doc.h("Cost")
    doc.table(cost_table(agg))
    doc.p(f"Metrics {sum(agg['cost_seconds'].values()):.1f} s in total; figures {fig_seconds:.1f} s. "
          f"Model-running metrics use {comp.perturbation_samples} samples "
          "(`python -m xkd.report RUN --perturbation-samples 0` uses every eval sample).")
    doc.h("Metric parameters", 3)
    doc.table(params_table(agg["params"]))
    return doc


def _swap(root: Path, tmp: Path, names: tuple[str, ...]) -> None:
    """Move ``tmp/<name>`` to ``root/<name>`` for each name, replacing what was there."""
    for name in names:
        new, dst = tmp / name, root / name
        if not new.exists():
            continue
        if dst.exists():
            os.replace(dst, tmp / f"old-{name}")
        os.replace(new, dst)


def build_report(run_dir: str | Path, metrics: list[str] | None = None, subset: int | None = None,
                 log: Log = print, perturbation_samples: int | None = PERTURBATION_SAMPLES,
                 device: str = "cpu", figures: bool | None = None) -> Path:
    """Recompute metrics from ``run_dir`` and write ``RUN/metrics`` and ``RUN/report``.

    ``metrics``: names (default: ``evaluate.metrics`` of the run, else all registered);
    ``subset``: the first N eval samples; ``perturbation_samples``: cap for model-running metrics
    (None/0: all); ``figures``: draw figures (default: ``report.figures`` of the run).
    Returns the path of ``report.html``.
    """
    t0 = time.perf_counter()
    data = load_run(run_dir)
    names = select_metrics(metrics if metrics is not None else data.cfg.evaluate.metrics)
    data.subset(subset)
    comp = compute_metrics(data, names, device=device, log=log,
                           perturbation_samples=perturbation_samples)
    root = data.root
    tmp = Path(tempfile.mkdtemp(prefix=".report-build-", dir=root))
    try:
        header = {"run": str(root), "n_samples": data.n, "subset": subset, "device": comp.device,
                  "perturbation_samples": comp.perturbation_samples,
                  "sanity_samples": comp.sanity_samples, "reference_model": comp.reference,
                  "control_seed": CONTROL_SEED, "target_rule": data.alignment_rule,
                  "faithfulness_target_rule": data.faithfulness_rule,
                  "explainers": data.explainers, "rows_by_rank": comp.rows_by_rank,
                  "created": time.time()}
        indices = data.inputs["indices"] if data.inputs else None
        agg = write_records(tmp / "metrics", comp, indices, data.cfg.report.bootstrap, header)
        doc = compose(data, comp, agg, subset, data.cfg.report.figures if figures is None else figures)
        rep = tmp / "report"
        for name, png in doc.figures().items():
            io.write_bytes(rep / "figures" / f"{name}.png", png)
        io.write_text(rep / "report.md", doc.markdown())
        io.write_text(rep / "report.html", doc.html())
        _swap(root, tmp, ("metrics", "report"))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    log(f"[xkd.report] report written to {root / 'report'} ({time.perf_counter() - t0:.1f} s)")
    return root / "report" / "report.html"
