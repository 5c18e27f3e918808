"""cGAN-KD in the experiment flow (Ding et al. 2023; seed_methods.md 5.1-5.5; issue 8).

Per seed, the first ``cgan_kd`` student triggers the GAN stage: the conditional GAN is trained
once into ``RUN/cgan/`` (resumable with the run's ``--resume``; a finished ``generator.pt`` is
reused) and the cDR-RS density-ratio model is fitted in the configured feature space (M1, 5.3).
Each student then gets a processed fake set (rejection-sampled, teacher-filtered, relabelled for
regression; M2, 5.4) cached per setting as ``RUN/cgan/fake_<key>.npz``, and trains on real + fake
(M3, 5.5), optionally fine-tuned from an earlier student's best checkpoint. Stage seconds (GAN,
ratio fit, sampling, filtering) go into the student's metrics.json. Under DDP only rank 0 trains
the GAN and writes ``RUN/cgan/``; the other ranks wait (:func:`xkd.engine.ranks.wait_for_main`,
at most ``distributed.timeout_minutes``) and load the stored fake set, which every rank trains on.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import ConcatDataset, Dataset

from xkd import io
from xkd.gan.fakeset import FakeSplit, RealOnly, load_fake_set, save_fake_set
from xkd.pipeline.generated_checks import gan_config, subsample_config
from xkd.pipeline.generated_process import features, process_fakes, ratio_labels
from xkd.data.base import DataBundle
from xkd.data.label_scaling import training_split
from xkd.engine.distributed import is_main_process
from xkd.engine.ranks import wait_for_main
from xkd.errors import UserError
from xkd.models.base import FeatureModel

if TYPE_CHECKING:
    from xkd.pipeline.context import RunContext

SMOKE_GAN = {"steps": 4, "batch_size": 16, "checkpoint_every": 2, "log_every": 2, "ema_start": 0}
SMOKE_FAKES = 64
SMOKE_RATIO = {"steps": 4, "batch_size": 32, "burn_in": 32, "proposal_batch": 32}


@dataclass
class GANStage:
    """The per-seed GAN and its density-ratio model (the ratio is fitted lazily)."""

    generator: torch.nn.Module
    gan_seconds: float
    ratio: Any = None
    ratio_seconds: float = 0.0


def _gan_cfg(ctx: "RunContext") -> Any:
    cfg = gan_config(ctx.cfg.cgan)
    return cfg.model_copy(update={k: min(getattr(cfg, k), v) for k, v in SMOKE_GAN.items()}) if ctx.smoke else cfg


def _ratio_cfg(ctx: "RunContext", enabled: bool) -> Any:
    cfg = subsample_config(ctx.cfg.cgan, enabled)
    return cfg.model_copy(update={k: min(getattr(cfg, k), v) for k, v in SMOKE_RATIO.items()}) if ctx.smoke else cfg


def gan_stage(ctx: "RunContext", bundle: DataBundle) -> GANStage:
    """Train (or reuse) this seed's conditional GAN in ``RUN/cgan/``; once per seed."""
    from xkd.gan.training import train_gan

    if "cgan" in ctx.stages:
        return ctx.stages["cgan"]
    out = ctx.folder.root / "cgan"
    stage_file = out / "stage.json"
    t0 = time.perf_counter()
    reused = (out / "generator.pt").is_file() and stage_file.is_file()
    g = train_gan(_gan_cfg(ctx), bundle.train, bundle.task, bundle.num_classes, out, ctx.device,
                  ctx.seed, resume=ctx.resume, log=ctx.log, mean=bundle.mean, std=bundle.std)
    seconds = time.perf_counter() - t0
    if reused:  # the time the GAN cost when it was trained
        seconds = float(io.read_json(stage_file).get("gan_seconds", seconds))
    else:
        io.write_json(stage_file, {"gan_seconds": round(seconds, 2), "seed": ctx.seed})
    ctx.stages["cgan"] = GANStage(g.to(ctx.device).eval(), seconds)
    return ctx.stages["cgan"]


def _ratio(ctx: "RunContext", stage: GANStage, teacher: FeatureModel, bundle: DataBundle) -> Any:
    """Fit the label-conditioned density-ratio model once per seed (fakes use the real labels)."""
    from xkd.gan.subsample import fit_density_ratio
    from xkd.gan.training import load_images

    if stage.ratio is None:
        t0 = time.perf_counter()
        x, y = load_images(bundle.train)
        fake = _generate(stage, y, ctx.seed + 1, ctx)
        cond = ratio_labels(y, bundle)
        stage.ratio = fit_density_ratio(features(ctx, teacher, x), cond, features(ctx, teacher, fake),
                                        cond, _ratio_cfg(ctx, True), ctx.seed)
        stage.ratio_seconds = time.perf_counter() - t0
    return stage.ratio


def _generate(stage: GANStage, labels: torch.Tensor, seed: int, ctx: "RunContext") -> torch.Tensor:
    from xkd.gan.training import generate

    return generate(stage.generator, labels, seed, device=ctx.device)


def fake_key(p: Any, ctx: "RunContext") -> str:
    """Cache key of a processed fake set: every setting that changes its content."""
    parts = {"size": p.fake_size, "subsample": p.subsample, "filter": p.filter.model_dump(mode="json"),
             "gan": _gan_cfg(ctx).model_dump(mode="json"), "seed": ctx.seed,
             "ratio": _ratio_cfg(ctx, p.subsample).model_dump(mode="json"), "features": ctx.cfg.cgan.features}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def build_fake_set(ctx: "RunContext", p: Any, teacher: FeatureModel, bundle: DataBundle
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Generate, subsample (cDR-RS), filter and relabel ``p.fake_size`` fakes; times in the meta."""
    stage = gan_stage(ctx, bundle)
    times: dict[str, float] = {"gan_seconds": round(stage.gan_seconds, 2)}
    ratio = None
    if p.subsample:
        ratio = _ratio(ctx, stage, teacher, bundle)
        times["ratio_fit_seconds"] = round(stage.ratio_seconds, 2)
    q = p.filter.quantile if p.filter.enabled else 1.0
    n_prop = math.ceil(p.fake_size / q * 1.15) + bundle.num_classes
    images, labels, info = process_fakes(ctx, stage, ratio, _ratio_cfg(ctx, True), teacher, bundle,
                                         p, n_prop)
    return images, labels, {**times, **info}


def fake_training_set(ctx: "RunContext", i: int, p: Any, teacher: FeatureModel | None,
                      bundle: DataBundle) -> tuple[Dataset, dict[str, Any]]:
    """Real + processed fake training set of student ``i`` (labels normalised for regression)."""
    where = f"students[{i}].params"
    if ctx.smoke:  # --smoke: a few fakes, like the few real samples
        p = p.model_copy(update={"fake_size": min(p.fake_size, SMOKE_FAKES)})
    p = p.model_copy(update={"filter": p.filter.resolved(bundle.task)})  # null quantile: the task's rho
    if p.fake_size == 0 and p.fake_data is None:  # control: real data only, same fine-tuning
        return training_split(bundle.train, bundle), {"fake_used": 0}
    if p.fake_data is not None:
        images, labels, meta = load_fake_set(p.fake_data, bundle, f"{where}.fake_data")
    else:
        if teacher is None:
            raise UserError(f"{where}: cgan_kd needs a teacher to filter the fakes")
        path = ctx.folder.root / "cgan" / f"fake_{fake_key(p, ctx)}.npz"
        if not path.is_file() and is_main_process():  # only rank 0 trains the GAN and writes
            images, labels, meta = build_fake_set(ctx, p, teacher, bundle)
            save_fake_set(path, images, labels, bundle, meta)
        wait_for_main(f"the cGAN stage ({path.parent / path.name})")
        # every rank (and a resumed run) trains on the same stored fakes
        images, labels, meta = load_fake_set(path, bundle, f"{where} cache {path.name}")
    fake = FakeSplit(images, labels, offset=len(bundle.train))
    data = ConcatDataset([RealOnly(bundle.train), fake])
    keys = ("gan_seconds", "ratio_fit_seconds", "sampling_seconds", "filtering_seconds",
            "fake_proposed", "fake_after_subsample", "fake_after_filter", "acceptance_rate")
    info = {k: meta[k] for k in keys if isinstance(meta.get(k), (int, float))}
    info["fake_used"] = len(fake)
    return training_split(data, bundle), info


def init_from_student(ctx: "RunContext", student: FeatureModel, name: str, where: str) -> None:
    """Fine-tune start: load the ``student.*`` weights of ``RUN/students/NAME/best.pt``."""
    path = ctx.folder.student(name) / "best.pt"
    if not path.is_file():
        path = ctx.folder.student(name) / "last.pt"
    if not path.is_file():
        raise UserError(f"{where}.init_from: no checkpoint of student '{name}' in {path.parent}")
    from xkd.engine.checkpoint import read_checkpoint

    state = read_checkpoint(path)  # format_version checked; best.pt: "model", last.pt: "trainable"
    model = state.get("model") or state.get("trainable") or {}
    sub = {k[len("student."):]: v for k, v in model.items() if k.startswith("student.")}
    if not sub:
        raise UserError(f"{where}.init_from: {path} holds no student weights")
    student.load_state_dict(sub)
