"""The experiment file's schema: pydantic models of every section (loading lives in ``loading.py``).

One YAML file (read with ``yaml.safe_load``) describes data, teacher, students, training,
explanation, evaluation, report and output. Every error becomes one :class:`ConfigError` line
naming the field path, the bad value and what is allowed. The resolved config (every default
written out) is saved as ``RUN/config.yaml``.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from types import UnionType
from typing import Union as _Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is (optionally) a number: int, float or a union holding one."""
    if annotation in (int, float):
        return True
    return any(_numeric(a) for a in get_args(annotation)) if get_origin(annotation) in (_Union, UnionType) else False


class NumbersAreNumbers(BaseModel):
    """Mixin: a boolean is not a number (``epochs: true`` is refused, not read as 1) and floats are
    finite (``lr: .inf`` and ``.nan`` are refused), so no lax cast changes what a value means."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(v, bool) and field is not None and _numeric(field.annotation) \
                and not _takes_bool(field.annotation):
            raise ValueError(f"expected a number, got the boolean {v}")
        return v


def _takes_bool(annotation: Any) -> bool:
    return annotation is bool or any(_takes_bool(a) for a in get_args(annotation))


class Strict(NumbersAreNumbers):
    """Base: unknown keys are errors, values are validated on assignment, booleans are not
    numbers and floats are finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


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
    amp: bool = Field(True, description="mixed precision (autocast); see amp_dtype")
    amp_dtype: Literal["float16", "bfloat16", "auto"] = Field(
        "float16", description="float16: CUDA only, with loss scaling (CPU stays fp32); bfloat16: "
        "CUDA and CPU autocast, no scaler; auto: bfloat16 where the GPU has it natively, else "
        "float16 (xkd.engine.precision)")
    channels_last: bool = Field(False, description="NHWC weights and image batches on CUDA "
                                "(faster tensor-core convolutions under AMP); ignored on CPU")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on batches per epoch")
    grad_clip: float | None = Field(None, gt=0)
    diverge_factor: float | None = Field(
        1e3, gt=1, description="divergence guard for finite blow-ups: the run stops with an error "
        "(keeping the last good checkpoint) when an epoch's mean training loss exceeds this multiple "
        "of the first step's loss (taken as at least 1e-3); null turns the guard off")
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
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank")
    persistent_workers: bool = Field(
        True, description="keep the loader workers alive across epochs (with num_workers > 0); "
        "exact --resume needs a dataset whose __getitem__ draws no random numbers, as no built-in "
        "one does: set false for a dataset of your own that does")


class ExplainConfig(Strict):
    """Teacher saliency used as privileged information (and for the eval-subset export)."""

    method: str = "gradcam"
    target: Literal["label", "teacher_top1", "predicted"] = "teacher_top1"
    params: dict[str, Any] = Field(default_factory=dict)
    cache: bool = Field(True, description="precompute train-split maps once (memory-mapped)")
    max_batch: int = Field(64, ge=1, description="memory knob mapped to Captum's batch arguments")
    storage_size: Union[Literal["auto", "input"], int] = Field(
        "auto", description="side of the cached maps: 'auto' = the explainer's native size "
        "(Grad-CAM's layer) or else the finest level the student reads; 'input' = image size; "
        "an integer s = s x s (area-averaged); maps are brought back to the image size on read")

    @field_validator("storage_size")
    @classmethod
    def _positive_side(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError(f"storage_size {v} must be >= 1 (or 'auto', 'input')")
        return v


class EvaluateConfig(Strict):
    subset_size: int = Field(64, ge=1, description="fixed, seeded eval subset for explanations")
    subset_seed: int = 0
    explainers: list[str] = Field(default_factory=lambda: ["gradcam"])
    metrics: list[str] | None = Field(None, description="metric names; null = all that apply")
    faithfulness_target: Literal["predicted", "label"] = Field(
        "predicted", description="class each model is explained and scored for by faithfulness, "
        "robustness, localisation and sanity metrics: its own top-1 ('predicted') or the label; "
        "alignment always compares student and teacher maps for the teacher's top-1")


class ReportConfig(Strict):
    enabled: bool = True
    figures: bool = True
    baseline: str | None = Field(
        None, description="student that multi-seed reports pair every other student against")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for 95% CIs")


class OutputConfig(Strict):
    root: str = "runs"
    run_name: str | None = Field(None, description="folder name; default <name>-<timestamp>")


class DistributedConfig(Strict):
    """Settings of a ``torchrun`` launch (DDP)."""

    timeout_minutes: float = Field(30.0, gt=0, description="process-group timeout: how long a "
                                   "collective (barrier, broadcast) may wait before the job fails")


class CGANSection(Strict):
    """cGAN-KD (Ding et al. 2023; issue 8): the conditional GAN trained once per seed into
    ``RUN/cgan/`` and the cDR-RS ratio model; ``cgan_kd`` students draw processed fakes from it.
    ``gan`` and ``subsample`` are validated against ``xkd.gan.config.GANConfig`` and
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
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

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
