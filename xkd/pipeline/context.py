"""The run context shared by the stages of one seed (DESIGN section 3), with the helpers every
stage uses: the data bundle per override, the train section as run, a model built with
seed-determined weights, and training one distiller with the engine."""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from xkd import io
from xkd.config import ExperimentConfig, ModelConfig, TrainConfig
from xkd.data import DataBundle, JointAugment, build_data
from xkd.data.label_scaling import training_split
from xkd.distill import Distiller
from xkd.engine import fit
from xkd.engine.env import derive_seed, seed_everything
from xkd.models import FeatureModel, build as build_model
from xkd.pipeline.multimodal import model_geometry
from xkd.runfolder import RunFolder

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
    """Per-seed stage products shared by students (e.g. the cGAN-KD generator, ``xkd.pipeline.generated``)."""

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


def build_model_for(mc: ModelConfig, b: DataBundle, path: str, seed: int, modality: str = "image") -> FeatureModel:
    """Build a model with initial weights that depend only on (seed, config path)."""
    seed_everything(derive_seed(seed, zlib.crc32(path.encode())))
    in_channels, image_size = model_geometry(b, modality)
    return build_model(mc, num_classes=b.num_classes, in_channels=in_channels,
                       image_size=image_size, path=path)


def n_params(m: torch.nn.Module) -> int:
    """Number of parameters of ``m``."""
    return sum(p.numel() for p in m.parameters())


def train_model(ctx: RunContext, distiller: Distiller, bundle: DataBundle, train: TrainConfig,
           out_dir: Path, extras: dict[str, Any] | None, desc: str,
           train_data: Dataset | None = None) -> dict[str, Any]:
    """Train ``distiller`` with the engine into ``out_dir`` and load its best checkpoint. The
    ``train_seconds`` are fit's: the epochs' seconds summed over every resumed part (stored in
    ``last.pt``), not the time of this call (a resumed, already trained model takes none)."""
    real = training_split(bundle.train, bundle)
    train_set = JointAugment(real if train_data is None else train_data, bundle.train_transform, extras)
    val_set = training_split(bundle.val, bundle)  # regression: selection on normalised val MAE
    res = fit(distiller, train_set, val_set, ctx.train_cfg(train, bundle.task), out_dir, device=ctx.device,
              seed=ctx.seed, deterministic=ctx.cfg.deterministic, resume=ctx.resume,
              task=bundle.task, num_workers=ctx.cfg.data.num_workers,
              persistent_workers=ctx.cfg.data.persistent_workers, desc=desc, log=ctx.log)
    best = out_dir / "best.pt"
    if best.is_file():  # deploy the checkpoint selected on the validation split
        state = io.torch_load(best)
        distiller.trainable_modules().load_state_dict(state["model"])
    return {"best_epoch": res.best_epoch, "best_val": res.best_metric,
            "train_seconds": round(res.seconds, 2), "epochs": res.epochs_run}
