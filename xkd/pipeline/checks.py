"""Checks of an experiment against the registries, before anything is written: every dataset,
model, method, explainer and metric name exists and its params fit the schema the family
registers; the cGAN-KD and multi-modal sections are consistent. Also the method params resolved
through their schemas (``method_params``) and the resolved dump written as ``RUN/config.yaml``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from xkd.config import ExperimentConfig, ModelConfig, StudentConfig, _error_from_validation, parse
from xkd.config.loading import load_with_overrides
from xkd.data import DATASETS
from xkd.distill import METHODS, validated_params
from xkd.errors import ConfigError
from xkd.explain import EXPLAINERS
from xkd.metrics import METRICS
from xkd.models import check
from xkd.pipeline.generated_checks import check_cgan, resolved_cgan
from xkd.pipeline.multimodal import check_teachers


def validate(raw: dict[str, Any], base_dir: Path | None = None) -> ExperimentConfig:
    """Validate a raw mapping into :class:`ExperimentConfig`, then check names and method params."""
    cfg = parse(raw)
    check_names(cfg, base_dir)
    return cfg


def load(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, override (``--set``) and validate an experiment file."""
    return validate(load_with_overrides(path, overrides), Path(path).parent)


def _check_model(m: ModelConfig, path: str) -> None:
    if m.checkpoint is not None and not Path(m.checkpoint).is_file():
        raise ConfigError(f"{path}.checkpoint", f"file not found: {m.checkpoint}")
    check(m, path)


def check_names(cfg: ExperimentConfig, base_dir: Path | None = None) -> None:
    """Registered names exist and method/dataset params match their schemas."""
    entry = DATASETS.entry(cfg.data.name, path="data.name")
    if entry.params is not None:
        try:
            entry.params.model_validate(cfg.data.params)
        except ValidationError as e:
            raise _error_from_validation(e, "data.params", entry.params) from None
    if cfg.teacher is not None:
        _check_model(cfg.teacher.model, "teacher.model")
        if cfg.teacher.data and entry.params is not None:
            try:
                entry.params.model_validate({**cfg.data.params, **cfg.teacher.data})
            except ValidationError as err:
                raise _error_from_validation(err, "teacher.data", entry.params) from None
        if cfg.teacher.pretrained and cfg.teacher.model.checkpoint is None:
            raise ConfigError("teacher.pretrained", "true needs teacher.model.checkpoint to be set")
    EXPLAINERS.entry(cfg.explain.method, path="explain.method")
    for i, name in enumerate(cfg.evaluate.explainers):
        EXPLAINERS.entry(name, path=f"evaluate.explainers[{i}]")
    for i, s in enumerate(cfg.students):
        where = f"students[{i}]"
        e = METHODS.entry(s.method, path=f"{where}.method")
        _check_model(s.model, f"{where}.model")
        if e.params is not None:
            try:
                e.params.model_validate(s.params)
            except ValidationError as err:
                raise _error_from_validation(err, f"{where}.params", e.params) from None
        if e.meta.get("needs_teacher", True) and cfg.teacher is None and not cfg.teachers:
            raise ConfigError(f"{where}.method", f"'{s.method}' needs a teacher section")
        if s.data and entry.params is not None:
            try:
                entry.params.model_validate({**cfg.data.params, **s.data})
            except ValidationError as err:
                raise _error_from_validation(err, f"{where}.data", entry.params) from None
    if cfg.cgan is not None or any(s.method == "cgan_kd" for s in cfg.students):
        check_cgan(cfg)
    check_teachers(cfg, _check_model)
    if cfg.evaluate.metrics is not None:
        for i, m in enumerate(cfg.evaluate.metrics):
            METRICS.entry(m, path=f"evaluate.metrics[{i}]")


def method_params(cfg: StudentConfig) -> Any:
    """The validated params model of a student's method."""
    return validated_params(cfg.method, cfg.params)


def resolved_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every default written out, method params resolved through their schemas."""
    out = cfg.model_dump(mode="json")
    for i, s in enumerate(cfg.students):
        p = method_params(s)
        if isinstance(p, BaseModel):
            out["students"][i]["params"] = p.model_dump(mode="json")
    if cfg.cgan is not None:
        out["cgan"] = resolved_cgan(cfg.cgan)
    return out

