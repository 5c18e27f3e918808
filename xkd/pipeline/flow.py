"""The flow of one seed (DESIGN section 3): data -> teacher -> saliency -> students -> evaluate ->
explanations -> report -> summary.json (written last, so a folder without it is incomplete). Each
stage lives in its own module of this package; this one runs them in order."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from xkd import io
from xkd.config import ExperimentConfig
from xkd.distill import Distiller
from xkd.engine import environment_info, init_distributed, is_main_process, resolve_device
from xkd.engine.ranks import wait_for_main
from xkd.models import FeatureModel
from xkd.pipeline.checks import resolved_dict
from xkd.pipeline.context import RunContext
from xkd.pipeline.evaluation import evaluate_models
from xkd.pipeline.export import export_explanations
from xkd.pipeline.export_video import export_video_explanations
from xkd.pipeline.multimodal_teachers import multimodal_metrics, train_named_teachers
from xkd.pipeline.students import train_student
from xkd.pipeline.teacher import train_teacher
from xkd.runfolder import RunFolder


def run_one_seed(cfg: ExperimentConfig, seed: int, run_dir: Path, *, resume: bool, smoke: bool,
                 argv: list[str], log: Any = print) -> dict[str, Any]:
    """Run the whole flow for one seed into ``run_dir``; returns the summary dict.

    Under DDP every rank trains, predicts its share of the test sets and computes its share of the
    report's metric rows; rank 0 alone exports, writes the report and the summary, while the other
    ranks wait for it (:func:`xkd.engine.ranks.wait_for_main`) and return ``{}``: they hold no
    summary, and nothing downstream may read one from them."""
    init_distributed(timeout_s=round(cfg.distributed.timeout_minutes * 60))
    device = resolve_device(cfg.device)
    folder = RunFolder(run_dir)
    ctx = RunContext(cfg, seed, folder, device, resume=resume, smoke=smoke, log=log)
    if is_main_process():
        resolved = resolved_dict(cfg)
        resolved["seed"] = seed
        io.write_yaml(folder.config, resolved)
        io.write_json(folder.env, environment_info(seed, argv, device=device) | {"smoke": smoke})
    t_start = time.perf_counter()
    say = log if is_main_process() else (lambda *_: None)
    say(f"[xkd] seed {seed} -> {folder.root}")
    if cfg.teacher is not None:
        tc = cfg.teacher
        how = f"loading {tc.model.checkpoint}" if tc.pretrained else \
            f"training {tc.model.name or tc.model.factory}, {cfg.train_for(tc.train).epochs} epochs"
        say(f"[xkd] stage teacher: {how}")
    teacher, tinfo = train_teacher(ctx)
    named, ninfos = train_named_teachers(ctx)
    models: dict[str, FeatureModel] = {}
    infos: dict[str, dict[str, Any]] = {}
    distillers: dict[str, Distiller] = {}
    if teacher is not None:
        models["teacher"], infos["teacher"] = teacher, {"role": "teacher", "method": "-", **tinfo}
    for n, ref in named.items():
        models[n], infos[n] = ref.model, ninfos[n]
    for i, sc in enumerate(cfg.students):
        say(f"[xkd] stage student {i + 1}/{len(cfg.students)}: {sc.name} ({sc.method}, "
            f"{sc.model.name or sc.model.factory}, {cfg.train_for(sc.train).epochs} epochs)")
        student, d, info = train_student(ctx, i, teacher, named)
        models[sc.name], distillers[sc.name], infos[sc.name] = student, d, {"role": "student", **info}
    say(f"[xkd] stage evaluation: {len(models)} models on {', '.join(ctx.data().test_sets())}")
    results = evaluate_models(ctx, models)  # every rank predicts its share of the test sets
    if not is_main_process():
        wait_for_main(f"seed {seed} (explanations)")
        if cfg.report.enabled:  # every rank computes its share of the report's metric rows
            _report(folder, log, device)
        wait_for_main(f"seed {seed} (report, summary)")
        return {}
    multimodal_metrics(ctx, models, results)
    for name, info in infos.items():
        target = folder.teacher if name == "teacher" else folder.student(name)
        if name in named:
            target = folder.root / "teachers" / name
        io.write_json(target / "metrics.json", {"model": name, **info, **results[name]})
    say(f"[xkd] stage explanations: {', '.join(cfg.evaluate.explainers)} on the evaluation subset "
        f"({cfg.evaluate.subset_size} samples)")
    if ctx.keys:  # multi-modal: per-frame video explanations (xkd.pipeline.export_video)
        export_video_explanations(ctx, models)
    else:
        export_explanations(ctx, teacher, models, distillers)
    rows = [{"model": n, **infos[n], **results[n]} for n in models]
    summary = {"name": cfg.name, "seed": seed, "smoke": smoke, "rows": rows,
               "task": ctx.data().task, "test_sets": list(ctx.data().test_sets()),
               "seconds": round(time.perf_counter() - t_start, 1)}
    wait_for_main(f"seed {seed} (explanations)")
    if cfg.report.enabled:
        say(f"[xkd] stage report: {folder.root / 'report'}")
        _report(folder, log, device)
    io.write_json(folder.summary, summary)
    wait_for_main(f"seed {seed} (report, summary)")
    return summary


def _report(folder: RunFolder, log: Any, device: torch.device) -> None:
    """Rank 0 builds and writes the report; under DDP the other ranks compute their share of its
    metric rows (:func:`xkd.report.compute.compute_metrics`) and write nothing."""
    from xkd.report import build_report
    from xkd.report.compute import compute_metrics
    from xkd.report.loading import load_run

    if is_main_process():
        build_report(folder.root, log=log, device=str(device))
        return
    data = load_run(folder.root)
    compute_metrics(data, data.cfg.evaluate.metrics, device=device, log=lambda *_: None)


def aggregate_seeds(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample std over seeds of every numeric column, per model."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        for r in s["rows"]:
            by_model.setdefault(r["model"], []).append(r)
    out = []
    for model, rows in by_model.items():
        agg: dict[str, Any] = {"model": model, "method": rows[0].get("method"),
                               "arch": rows[0].get("arch"), "n_seeds": len(rows)}
        for k in rows[0]:
            vals = [r.get(k) for r in rows]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                m = sum(vals) / len(vals)
                sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
                agg[f"{k}_mean"], agg[f"{k}_std"] = m, sd
        out.append(agg)
    return out
