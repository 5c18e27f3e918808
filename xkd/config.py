"""The experiment file: pydantic models, loading, ``--set`` overrides, validation and dumping.

One YAML file (read with ``yaml.safe_load``) describes data, teacher, students, training,
explanation, evaluation, report and output. Every error becomes one :class:`ConfigError` line
naming the field path, the bad value and what is allowed. The resolved config (every default
written out) is saved as ``RUN/config.yaml``.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from xkd.errors import ConfigError, UnknownNameError, UserError


class Strict(BaseModel):
    """Base: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)


class ScheduleConfig(Strict):
    name: Literal["constant", "step", "cosine"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up length in epochs")
    milestones: list[int] = Field(default_factory=list, description="epochs for 'step'")
    gamma: float = Field(0.1, gt=0, le=1)
    min_lr: float = Field(0.0, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on batches per epoch")
    grad_clip: float | None = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)
    select_metric: Literal["val_acc", "val_loss", "val_mae"] | None = Field(
        None, description="checkpoint selection for best.pt; null = val_acc (classification) or "
        "val_mae (regression)")


class TrainOverride(Strict):
    """Per-model overrides of the shared ``train`` section (unset fields inherit)."""

    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    optimizer: OptimizerConfig | None = None
    schedule: ScheduleConfig | None = None
    max_steps_per_epoch: int | None = Field(None, ge=1)
    grad_clip: float | None = Field(None, gt=0)


class ModelConfig(Strict):
    """A backbone: a registered name (``resnet20``, ``tv:resnet18``), or ``factory: pkg.mod:fn``."""

    name: str | None = None
    factory: str | None = Field(None, description="importable 'pkg.module:function' returning nn.Module")
    params: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="state_dict file, loaded with weights_only=True")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if (self.name is None) == (self.factory is None):
            raise ValueError("set exactly one of 'name' (a registered model) or 'factory'")
        if self.factory is not None and not re.fullmatch(r"[\w.]+:[\w.]+", self.factory):
            raise ValueError(f"factory '{self.factory}' must look like 'package.module:function'")
        return self


class TeacherConfig(Strict):
    model: ModelConfig
    modality: str = Field("image", description="batch key the model reads (a modality of the "
                          "dataset: image, video, audio ...)")
    train: TrainOverride = Field(default_factory=TrainOverride)
    pretrained: bool = Field(
        False, description="true: use model.checkpoint as-is and skip training the teacher")
    data: dict[str, Any] = Field(
        default_factory=dict, description="dataset param overrides for the teacher's training set")


class StudentConfig(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.\-]+$")
    method: str
    model: ModelConfig
    modality: str = Field("image", description="batch key the student reads (a dataset modality)")
    teacher: str | None = Field(None, description="named teacher (a key of 'teachers') that a "
                                "single-teacher method such as kd learns from")
    params: dict[str, Any] = Field(default_factory=dict)
    train: TrainOverride = Field(default_factory=TrainOverride)
    data: dict[str, Any] = Field(
        default_factory=dict, description="dataset param overrides for this student's training set")


class AugmentConfig(Strict):
    crop_padding: int = Field(4, ge=0, description="random crop with this padding; 0 disables")
    hflip: bool = True


class DataConfig(Strict):
    name: str = "shapes"
    params: dict[str, Any] = Field(default_factory=dict)
    root: str | None = None
    download: bool = False
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    num_workers: int = Field(0, ge=0)


class ExplainConfig(Strict):
    """Teacher saliency used as privileged information (and for the eval-subset export)."""

    method: str = "gradcam"
    target: Literal["label", "teacher_top1", "predicted"] = "teacher_top1"
    params: dict[str, Any] = Field(default_factory=dict)
    cache: bool = Field(True, description="precompute train-split maps once (memory-mapped)")
    max_batch: int = Field(64, ge=1, description="memory knob mapped to Captum's batch arguments")


class EvaluateConfig(Strict):
    subset_size: int = Field(64, ge=1, description="fixed, seeded eval subset for explanations")
    subset_seed: int = 0
    explainers: list[str] = Field(default_factory=lambda: ["gradcam"])
    metrics: list[str] | None = Field(None, description="metric names; null = all that apply")


class ReportConfig(Strict):
    enabled: bool = True
    figures: bool = True
    baseline: str | None = Field(
        None, description="student that multi-seed reports pair every other student against")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for 95% CIs")


class OutputConfig(Strict):
    root: str = "runs"
    run_name: str | None = Field(None, description="folder name; default <name>-<timestamp>")


class CGANSection(Strict):
    """cGAN-KD (Ding et al. 2023; issue 8): the conditional GAN trained once per seed into
    ``RUN/cgan/`` and the cDR-RS ratio model; ``cgan_kd`` students draw processed fakes from it.
    ``gan`` and ``subsample`` are validated against ``xkd.cgan.config.GANConfig`` and
    ``SubsampleConfig`` (``subsample.enabled`` is set per student by ``cgan_kd``'s ``subsample``)."""

    gan: dict[str, Any] = Field(default_factory=dict, description="GANConfig fields")
    subsample: dict[str, Any] = Field(default_factory=dict, description="SubsampleConfig fields")
    features: Literal["teacher", "pixels"] = Field(
        "teacher", description="feature space of the density-ratio model: the teacher's pooled "
        "features (a classifier trained on the real data, as in the reference) or raw pixels")


class ExperimentConfig(Strict):
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = 0
    seeds: list[int] | None = Field(None, description="several seeds: one run sub-folder each")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig | None = None
    teachers: dict[str, TeacherConfig] | None = Field(
        None, description="named teachers, one per modality (multi-modal runs, e.g. ccl)")
    students: list[StudentConfig] = Field(default_factory=list)
    train: TrainConfig = Field(default_factory=TrainConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    cgan: CGANSection | None = Field(None, description="cGAN-KD GAN stage (needed by cgan_kd students)")

    @field_validator("students")
    @classmethod
    def _unique_names(cls, v: list[StudentConfig]) -> list[StudentConfig]:
        seen: set[str] = set()
        for s in v:
            if s.name == "teacher" or s.name.startswith("control_"):
                raise ValueError(f"student name '{s.name}' is reserved (teacher, control_*); pick another")
            if s.name in seen:
                raise ValueError(f"student name '{s.name}' is used twice; names must be unique")
            seen.add(s.name)
        return v

    def train_for(self, override: TrainOverride) -> TrainConfig:
        """The shared ``train`` section with a model's overrides applied."""
        merged = self.train.model_dump()
        merged.update({k: v for k, v in override.model_dump().items() if v is not None})
        return TrainConfig.model_validate(merged)


# ----------------------------------------------------------------------------- loading


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "union[", "model-")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _error_from_validation(e: ValidationError, prefix: str = "") -> ConfigError:
    err = e.errors(include_url=False)[0]
    path = _loc_to_path(tuple(err["loc"]))
    path = f"{prefix}.{path}" if prefix and path else (prefix or path)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling (see the documented fields of this section)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif "input" in err and err["type"] != "model_type":
        bad = err["input"]
        if not isinstance(bad, (dict, list)):
            msg = f"{msg} (got {bad!r})"
    return ConfigError(path, msg.replace("Value error, ", ""))


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """Parse ``a.b[0].c=value``; the value is read as YAML (``3`` -> int, ``[1,2]`` -> list)."""
    if "=" not in text:
        raise ConfigError("--set", f"'{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    parts: list[str | int] = []
    for token in key.strip().split("."):
        m = re.fullmatch(r"([A-Za-z_][\w\-]*)((?:\[\d+\])*)", token)
        if not m:
            raise ConfigError("--set", f"bad key path '{key}'")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_override(raw: dict[str, Any], parts: list[str | int], value: Any) -> None:
    """Set ``value`` at ``parts`` in the raw mapping (students may be addressed by name too)."""
    node: Any = raw
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if isinstance(p, str):  # students.NAME -> the student with that name
                match = [s for s in node if isinstance(s, dict) and s.get("name") == p]
                if not match:
                    raise ConfigError(_loc_to_path(tuple(parts[: i + 1])), "no list entry with that name")
                node = match[0]
                continue
            if p >= len(node):
                raise ConfigError(_loc_to_path(tuple(parts[: i + 1])), f"index out of range (len {len(node)})")
            node = node[p]
        else:
            if p not in node or node[p] is None:
                node[p] = [] if isinstance(nxt, int) else {}
            node = node[p]
    last = parts[-1]
    if isinstance(node, list) and isinstance(last, int):
        if last >= len(node):
            raise ConfigError(_loc_to_path(tuple(parts)), f"index out of range (len {len(node)})")
    node[last] = value


def load_raw(path: str | Path) -> dict[str, Any]:
    """Read an experiment YAML with ``safe_load``; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (data, teacher, ...)")
    raw.pop("format_version", None)
    return raw


def validate(raw: dict[str, Any], base_dir: Path | None = None) -> ExperimentConfig:
    """Validate a raw mapping into :class:`ExperimentConfig`, then check names and method params."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise _error_from_validation(e) from None
    check_names(cfg, base_dir)
    return cfg


def load(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, override (``--set``) and validate an experiment file."""
    raw = load_raw(path)
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(raw, parts, copy.deepcopy(value))
    return validate(raw, Path(path).parent)


def _check_model(m: ModelConfig, path: str) -> None:
    from xkd.models import check

    if m.checkpoint is not None and not Path(m.checkpoint).is_file():
        raise ConfigError(f"{path}.checkpoint", f"file not found: {m.checkpoint}")
    check(m, path)


def check_names(cfg: ExperimentConfig, base_dir: Path | None = None) -> None:
    """Registered names exist and method/dataset params match their schemas."""
    from xkd.data import DATASETS
    from xkd.distill import METHODS
    from xkd.explain import EXPLAINERS

    entry = DATASETS.entry(cfg.data.name, path="data.name")
    if entry.params is not None:
        try:
            entry.params.model_validate(cfg.data.params)
        except ValidationError as e:
            raise _error_from_validation(e, "data.params") from None
    if cfg.teacher is not None:
        _check_model(cfg.teacher.model, "teacher.model")
        if cfg.teacher.data and entry.params is not None:
            try:
                entry.params.model_validate({**cfg.data.params, **cfg.teacher.data})
            except ValidationError as err:
                raise _error_from_validation(err, "teacher.data") from None
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
                raise _error_from_validation(err, f"{where}.params") from None
        if e.meta.get("needs_teacher", True) and cfg.teacher is None and not cfg.teachers:
            raise ConfigError(f"{where}.method", f"'{s.method}' needs a teacher section")
        if s.data and entry.params is not None:
            try:
                entry.params.model_validate({**cfg.data.params, **s.data})
            except ValidationError as err:
                raise _error_from_validation(err, f"{where}.data") from None
    if cfg.cgan is not None or any(s.method == "cgan_kd" for s in cfg.students):
        from xkd.cgan.flow_checks import check_cgan

        check_cgan(cfg)
    from xkd.multimodal import check_teachers

    check_teachers(cfg, _check_model)
    if cfg.evaluate.metrics is not None:
        try:
            from xkd.metrics import METRICS
        except ImportError:  # metrics package not built yet
            return
        for i, m in enumerate(cfg.evaluate.metrics):
            METRICS.entry(m, path=f"evaluate.metrics[{i}]")


def method_params(cfg: StudentConfig) -> Any:
    """The validated params model of a student's method."""
    from xkd.distill import METHODS

    e = METHODS.entry(cfg.method)
    return e.params.model_validate(cfg.params) if e.params is not None else cfg.params


def resolved_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every default written out, method params resolved through their schemas."""
    out = cfg.model_dump(mode="json")
    for i, s in enumerate(cfg.students):
        p = method_params(s)
        if isinstance(p, BaseModel):
            out["students"][i]["params"] = p.model_dump(mode="json")
    if cfg.cgan is not None:
        from xkd.cgan.flow_checks import resolved_cgan

        out["cgan"] = resolved_cgan(cfg.cgan)
    return out
