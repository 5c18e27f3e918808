"""The experiment flow (DESIGN section 3): data -> teacher -> saliency -> students -> evaluate ->
explanations -> report -> summary.json (written last, so a folder without it is incomplete).
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from xkd import io
from xkd.config import ExperimentConfig, ModelConfig, TrainConfig, method_params, resolved_dict
from xkd.data import DataBundle, JointAugment, build_data
from xkd.data.label_scaling import to_original, training_split
from xkd.distill import DistillContext, Distiller, build_distiller, dataset_labels
from xkd.engine import (agreement, environment_info, evaluate_predictions, fit, init_distributed,
                        is_main_process, predict, resolve_device)
from xkd.engine.env import derive_seed, seed_everything
from xkd.models import FeatureModel, build as build_model
from xkd.runfolder import RunFolder
from xkd.teacher_saliency import saliency_extras, weight_map_quality

SMOKE_SAMPLES = 64
"""Samples per split in ``--smoke`` mode (every stage runs, on a few batches, for one epoch)."""


@dataclass
class RunContext:
    """What the flow shares between its stages for one seed."""

    cfg: ExperimentConfig
    seed: int
    folder: RunFolder
    device: torch.device
    resume: bool = False
    smoke: bool = False
    log: Any = print
    bundles: dict[str, DataBundle] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    """Model name -> the batch key (modality) it reads; absent = ``image``."""
    stages: dict[str, Any] = field(default_factory=dict)
    """Per-seed stage products shared by students (e.g. the cGAN-KD generator, ``xkd.cgan.stage``)."""

    def data(self, overrides: dict[str, Any] | None = None) -> DataBundle:
        """The data bundle with per-model overrides (built once per distinct override)."""
        key = repr(sorted((overrides or {}).items()))
        if key not in self.bundles:
            b = build_data(self.cfg.data, self.seed, overrides or None)
            if self.smoke:
                b = _shrink(b, SMOKE_SAMPLES)
            self.bundles[key] = b
        return self.bundles[key]

    def train_cfg(self, base: TrainConfig, task: str = "classification") -> TrainConfig:
        """The train section as run: selection metric resolved by task, shrunk under --smoke."""
        update: dict[str, Any] = {}
        if base.select_metric is None:
            update["select_metric"] = "val_acc" if task == "classification" else "val_mae"
        if self.smoke:
            update.update(epochs=1, max_steps_per_epoch=2, batch_size=min(base.batch_size, 16))
        return base.model_copy(update=update)


def _shrink(b: DataBundle, n: int) -> DataBundle:
    """The first ``n`` samples of every split (indices keep their meaning for caches)."""
    def cut(ds: Dataset) -> Dataset:
        return Subset(ds, range(min(n, len(ds))))  # type: ignore[arg-type]
    out = copy.copy(b)
    out.train, out.val, out.test = cut(b.train), cut(b.val), cut(b.test)
    out.extra_tests = {k: cut(v) for k, v in b.extra_tests.items()}
    out.identity = f"{b.identity}|first{n}"
    return out


def _model(mc: ModelConfig, b: DataBundle, path: str, seed: int, modality: str = "image") -> FeatureModel:
    """Build a model with initial weights that depend only on (seed, config path)."""
    from xkd.multimodal import model_geometry

    seed_everything(derive_seed(seed, zlib.crc32(path.encode())))
    in_channels, image_size = model_geometry(b, modality)
    return build_model(mc, num_classes=b.num_classes, in_channels=in_channels,
                       image_size=image_size, path=path)


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _train(ctx: RunContext, distiller: Distiller, bundle: DataBundle, train: TrainConfig,
           out_dir: Path, extras: dict[str, Any] | None, desc: str,
           train_data: Dataset | None = None) -> dict[str, Any]:
    real = training_split(bundle.train, bundle)
    train_set = JointAugment(real if train_data is None else train_data, bundle.train_transform, extras)
    t0 = time.perf_counter()
    val_set = training_split(bundle.val, bundle)  # regression: selection on normalised val MAE
    res = fit(distiller, train_set, val_set, ctx.train_cfg(train, bundle.task), out_dir, device=ctx.device,
              seed=ctx.seed, deterministic=ctx.cfg.deterministic, resume=ctx.resume,
              task=bundle.task, num_workers=ctx.cfg.data.num_workers, desc=desc, log=ctx.log)
    best = out_dir / "best.pt"
    if best.is_file():  # deploy the checkpoint selected on the validation split
        state = io.torch_load(best)
        distiller.trainable_modules().load_state_dict(state["model"])
    return {"best_epoch": res.best_epoch, "best_val": res.best_metric,
            "train_seconds": round(time.perf_counter() - t0, 2), "epochs": res.epochs_run}


def train_teacher(ctx: RunContext) -> tuple[FeatureModel | None, dict[str, Any]]:
    """Load a pretrained teacher, or train one from scratch with plain cross-entropy."""
    tc = ctx.cfg.teacher
    if tc is None:
        return None, {}
    bundle = ctx.data(tc.data)
    teacher = _model(tc.model, bundle, "teacher.model", ctx.seed)
    info: dict[str, Any] = {"params": _n_params(teacher), "arch": tc.model.name or tc.model.factory}
    if tc.pretrained:
        info["source"] = tc.model.checkpoint
    else:
        context = DistillContext(example=bundle.train[0]["image"].unsqueeze(0),
                                 num_classes=bundle.num_classes, task=bundle.task,
                                 epochs=ctx.cfg.train_for(tc.train).epochs, dataset_size=len(bundle.train))
        d = build_distiller("ce", teacher, None, {}, context)
        info.update(_train(ctx, d, bundle, ctx.cfg.train_for(tc.train), ctx.folder.teacher, None,
                           "teacher"))
        if is_main_process():
            io.torch_save(ctx.folder.teacher / "checkpoint.pt",
                          {"format_version": 1, "model": teacher.state_dict()})
    teacher.to(ctx.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, info


def train_student(ctx: RunContext, i: int, teacher: FeatureModel | None, named: dict[str, Any] | None = None
                  ) -> tuple[FeatureModel, Distiller, dict[str, Any]]:
    from xkd.multimodal_flow import student_inputs

    sc = ctx.cfg.students[i]
    path = f"students[{i}]"
    bundle = ctx.data(sc.data)
    student = _model(sc.model, bundle, f"{path}.model", ctx.seed, sc.modality)
    train = ctx.cfg.train_for(sc.train)
    teacher, mm = student_inputs(ctx, sc, bundle, teacher, named or {})
    context = DistillContext(example=bundle.train[0][sc.modality].unsqueeze(0),
                             num_classes=bundle.num_classes, task=bundle.task, epochs=train.epochs,
                             dataset_size=len(bundle.train),
                             extras={"path": path, "explain": ctx.cfg.explain,  # labels by train index (hkd)
                                     "labels": dataset_labels(bundle.train), **mm})
    d = build_distiller(sc.method, student, teacher, method_params(sc), context)
    extras = saliency_extras(ctx, d, teacher, bundle, f"{path}.params") if teacher is not None else None
    info = {"params": _n_params(student), "arch": sc.model.name or sc.model.factory,
            "method": sc.method}
    if extras and bundle.has_masks and is_main_process():
        info.update(weight_map_quality(extras["saliency"], bundle.train))
    train_data = None
    if getattr(d, "uses_fake_data", False):  # cGAN-KD: real + processed fakes (xkd.cgan.stage)
        from xkd.cgan.stage import fake_training_set, init_from_student

        train_data, cinfo = fake_training_set(ctx, i, d.params, teacher, bundle)
        info.update(cinfo)
        if d.params.init_from is not None:
            init_from_student(ctx, student, d.params.init_from, f"{path}.params")
    info.update(_train(ctx, d, bundle, train, ctx.folder.student(sc.name), extras, sc.name, train_data))
    return student, d, info


def evaluate_models(ctx: RunContext, models: dict[str, FeatureModel]) -> dict[str, dict[str, Any]]:
    """Accuracy (or MAE) on every test set and top-1 agreement/KL with the teacher (a student's
    own named teacher in multi-modal runs, :func:`xkd.multimodal.teacher_of`)."""
    from xkd.multimodal import teacher_of

    bundle = ctx.data()
    bs = ctx.train_cfg(ctx.cfg.train).batch_size * 2
    out: dict[str, dict[str, Any]] = {name: {} for name in models}
    partner = {sc.name: teacher_of(ctx.cfg, sc) or "teacher" for sc in ctx.cfg.students}
    for set_name, ds in bundle.test_sets().items():
        logits = {n: predict(m, ds, ctx.device, bs, input_key=ctx.keys.get(n, "image"))
                  for n, m in models.items()}
        for n, (lg, labels) in logits.items():  # regression: outputs back to original units
            for k, v in evaluate_predictions(to_original(lg, bundle), labels, bundle.task).items():
                out[n][f"{set_name}_{k}"] = v
            t = partner.get(n, "teacher")
            if t in logits and n != t and bundle.task == "classification":
                for k, v in agreement(lg, logits[t][0]).items():
                    out[n][f"{set_name}_{k}"] = v
    return out


def run_one_seed(cfg: ExperimentConfig, seed: int, run_dir: Path, *, resume: bool, smoke: bool,
                 argv: list[str], log: Any = print) -> dict[str, Any]:
    """Run the whole flow for one seed into ``run_dir``; returns the summary dict."""
    from xkd.export import export_explanations

    init_distributed()
    device = resolve_device(cfg.device)
    folder = RunFolder(run_dir)
    ctx = RunContext(cfg, seed, folder, device, resume=resume, smoke=smoke, log=log)
    if is_main_process():
        resolved = resolved_dict(cfg)
        resolved["seed"] = seed
        io.write_yaml(folder.config, resolved)
        io.write_json(folder.env, environment_info(seed, argv, device=device) | {"smoke": smoke})
    t_start = time.perf_counter()
    from xkd.multimodal_flow import multimodal_metrics, train_named_teachers

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
        log(f"[xkd] student {sc.name} ({sc.method}, {sc.model.name or sc.model.factory})")
        student, d, info = train_student(ctx, i, teacher, named)
        models[sc.name], distillers[sc.name], infos[sc.name] = student, d, {"role": "student", **info}
    if not is_main_process():
        return {}
    results = evaluate_models(ctx, models)
    multimodal_metrics(ctx, models, results)
    for name, info in infos.items():
        target = folder.teacher if name == "teacher" else folder.student(name)
        if name in named:
            target = folder.root / "teachers" / name
        io.write_json(target / "metrics.json", {"model": name, **info, **results[name]})
    if ctx.keys:  # multi-modal: per-frame video explanations (xkd.export_video)
        from xkd.export_video import export_video_explanations

        export_video_explanations(ctx, models)
    else:
        export_explanations(ctx, teacher, models, distillers)
    rows = [{"model": n, **infos[n], **results[n]} for n in models]
    summary = {"name": cfg.name, "seed": seed, "smoke": smoke, "rows": rows,
               "task": ctx.data().task, "test_sets": list(ctx.data().test_sets()),
               "seconds": round(time.perf_counter() - t_start, 1)}
    if cfg.report.enabled:
        _report(folder, log, device)
    io.write_json(folder.summary, summary)
    return summary


def _report(folder: RunFolder, log: Any, device: torch.device) -> None:
    from xkd.report import build_report

    build_report(folder.root, log=log, device=str(device))


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
