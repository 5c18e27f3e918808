"""The distiller contract (DESIGN section 3.4), mdistiller-style.

``Distiller.forward(batch, epoch)`` returns :class:`StepOutput`: the student's logits and a dict
of named loss tensors that the engine sums, logs and optimises. The teacher is frozen and always in
eval mode; ``extra_modules()`` are trained with the student (e.g. ReviewKD's ABFs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import ConfigDict
from torch import nn

from xkd.config.schema import NumbersAreNumbers
from xkd.engine.optim import OptimizerSet, build_optimizers
from xkd.errors import UserError
from xkd.models.base import FeatureModel
from xkd.registry import Registry

METHODS: Registry["Distiller"] = Registry("method")
"""Method factories: ``cls(student, teacher, params, context)`` with a pydantic ``params`` model."""


class MethodParams(NumbersAreNumbers):
    """Base of every method's parameter model: unknown keys are errors, a boolean is not a
    number and floats (temperatures, loss weights, learning rates) are finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass
class DistillContext:
    """What a distiller may need to know when it is built.

    ``example`` is one training image batch (1,C,H,W) for dry runs; ``num_classes`` and ``task``
    come from the DataBundle; ``epochs`` is the student's epoch budget (for warm-ups);
    ``dataset_size`` sizes memory banks. ``extras['student_key']`` / ``extras['teacher_key']``
    name the batch keys the student and the teacher read (default ``image``; multi-modal plumbing,
    docs/CONTRACTS.md); ``extras['teachers']`` holds named teachers for multi-teacher methods.
    """

    example: torch.Tensor
    num_classes: int
    task: str = "classification"
    epochs: int = 1
    dataset_size: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepOutput:
    """One training step: student logits plus named losses (summed by the engine)."""

    logits: torch.Tensor
    losses: dict[str, torch.Tensor]
    logs: dict[str, float] = field(default_factory=dict)


class Distiller(nn.Module):
    """Base distiller: holds the student and a frozen teacher (which may be ``None``).

    Subclasses implement :meth:`forward`. What a method asks of the engine and the pipeline is
    declared here, with defaults, and overridden where a method needs it (no attribute lookups
    by name anywhere):

    - :attr:`needs_teacher`, :attr:`uses_fake_data` (cGAN-KD), :attr:`uses_per_sample_state`
      (state indexed by dataset position, e.g. memory banks): what the method is;
    - :attr:`needs_saliency` and :meth:`saliency_spec`: the teacher maps the pipeline provides;
    - :meth:`extra_modules`, :meth:`param_groups`, :meth:`optimizer_groups`: what is optimised and
      with which settings; :meth:`configure_optimizers` builds them (the engine uses it too);
    - :attr:`ddp_find_unused_parameters`: DDP's flag for methods with conditional branches;
    - :meth:`attention_maps`: per-stage attention for the viewer.
    """

    needs_teacher: ClassVar[bool] = True
    reads_features: ClassVar[bool] = True
    """False for methods that read logits only (ce, kd): any ``nn.Module`` classifier will do."""
    uses_fake_data: ClassVar[bool] = False
    uses_per_sample_state: bool = False
    """True when the method keeps per-sample state indexed by dataset position (memory banks,
    target caches); such state must be kept consistent across DDP ranks by the method."""
    needs_saliency: bool = False
    ddp_find_unused_parameters: bool = False

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: MethodParams,
                 context: DistillContext) -> None:
        super().__init__()
        require_features(type(self), student, teacher, type(self).__name__)
        self.student = student
        self.params = params
        self.student_key: str = str(context.extras.get("student_key", "image"))
        self.teacher_key: str = str(context.extras.get("teacher_key", "image"))
        # The teacher is kept out of the module tree so it is never optimised, saved with the
        # student or wrapped in DDP; :meth:`_apply` moves it with the distiller.
        object.__setattr__(self, "teacher", teacher)
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def _apply(self, fn: Any, recurse: bool = True) -> "Distiller":
        """``to()``, ``cuda()``, ``half()``... apply to the teacher too (it is not a submodule)."""
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    def teacher_input_mask(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-sample presence (B,) of the teacher's input, ``batch['<teacher_key>_mask']`` (e.g.
        ``audio_mask`` of ``av_shapes``), or None when the dataset never lacks it."""
        return batch.get(f"{self.teacher_key}_mask")

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        """One training step on a batch dict (``image``, ``label``, ``index``, ...)."""
        raise TypeError(f"{type(self).__name__} does not define forward(batch, epoch)")

    def extra_modules(self) -> list[nn.Module]:
        """Modules trained with the student (adapters, fusion blocks...)."""
        return []

    def trainable_modules(self) -> nn.ModuleDict:
        """Student plus extra modules, the unit the engine optimises and checkpoints."""
        return nn.ModuleDict({"student": self.student,
                              "extra": nn.ModuleList(self.extra_modules())})

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups with their own settings inside the main optimiser: dicts with
        ``params`` plus ``lr``/``lr_scale``/``weight_decay``...; the rest goes in one default group."""
        return []

    def optimizer_groups(self) -> dict[str, dict[str, Any]]:
        """Separate optimisers: ``name -> {"params": [...], **OptimizerConfig overrides}``."""
        return {}

    def saliency_spec(self) -> dict[str, Any] | None:
        """Explainer settings of the teacher maps this method reads (None: it reads none)."""
        return None

    def configure_optimizers(self, optimizer: Any = None, schedule: Any = None, epochs: int = 1,
                             steps_per_epoch: int = 1, **settings: Any) -> OptimizerSet:
        """The method's optimisers: the main one over :meth:`trainable_modules` with the declared
        :meth:`param_groups`, plus one per :meth:`optimizer_groups` entry, each with its schedule.

        ``optimizer``/``schedule`` are :class:`~xkd.config.OptimizerConfig` /
        :class:`~xkd.config.ScheduleConfig` (or dicts of their fields); ``settings`` are optimiser
        fields given directly (``lr=0.05, name="sgd"``). Step every optimiser of the returned set
        after one backward pass (``opts.zero_grad(); loss.backward(); opts.step()``)."""
        return build_optimizers(self, optimizer, schedule, epochs, steps_per_epoch, **settings)

    def epoch_end(self, row: dict[str, Any]) -> None:
        """Called by the engine on every rank after each epoch with its history row (``epoch``,
        ``losses``, ``logs`` averaged over the epoch's batches and ranks); e.g. to warn about a
        setting that made the method degenerate. Nothing by default."""

    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-stage attention maps for the viewer (name -> (B,K,h,w)); none by default."""
        return {}


def require_features(cls: type["Distiller"], student: Any, teacher: Any, where: str) -> None:
    """One line when a method that reads stage features gets a model that exposes none."""
    if not cls.reads_features:
        return
    for role, model in (("student", student), ("teacher", teacher)):
        if model is not None and not isinstance(model, FeatureModel):
            raise UserError(f"{where}: the {role} ({type(model).__name__}) exposes no stage features; "
                            f"wrap it first: xkd.wrap(model, in_channels=..., image_size=...)")


def list_methods() -> list[str]:
    """Every registered distillation method."""
    import xkd.distill  # noqa: F401

    return METHODS.names()
