"""``ccl``: Compositional Contrastive Learning (Chen, Xian, Koepke, Shan, Akata, CVPR 2021;
reference/seed_methods.md section 4).

A video student learns from frozen audio and/or image teachers. Per teacher modality u, a
:class:`~xkd.distill.ccl.losses.CompositionHead` builds c_u = u + W_u [N(u); N(v)] and logits
z_{c,u}. With S the symmetric label-aware contrastive loss and J the symmetric KL (4.3):

- student objective  L_v = CE(z_v, y) + w * sum_u [S(v, c_u) + S(v, u)] + w * sum_u J(z_v, z_{c,u})
- head objective     L_u = CE(z_{c,u}, y) + S(v, c_u) + S(c_u, u) + J(z_v, z_{c,u})

w = 1 for CCL-A and CCL-I, 0.5 for CCL-AI (``loss_weight``). Gradient routing (4.3): the
reference back-propagates L_u, zeroes the video network's gradients, then back-propagates L_v, so
the heads learn from both objectives and the video network only from L_v. Here the engine sums the
losses once; the same gradients follow from computing L_u on the *detached* video embedding and
logits (the head is evaluated twice, which is cheap). Samples whose ``audio_mask`` is 0 are left
out of every audio term (the reference filters them per batch).

Losses: ``ce`` (video CE), ``<u>_ct`` (w * [S(v,c_u) + S(v,u)]), ``<u>_kl`` (w * J), ``<u>_head``
(L_u), with u the teacher's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.distill.ccl.losses import CompositionHead, symmetric_contrastive, symmetric_kl
from xkd.errors import ConfigError
from xkd.models.base import FeatureModel, describe

TEACHER_MODALITIES = ("audio", "image")
"""Teacher modalities a CCL branch can use (the letter of the variant: A, I)."""


class CCLParams(MethodParams):
    """Parameters of ``ccl`` (seed_methods.md 4.3-4.4: tau 0.5 audio / 0.1 image, J weight 0.5)."""

    variant: Literal["A", "I", "AI"] = Field("AI", description="teachers used: audio, image or both")
    audio_teacher: str | None = Field(None, description="named teacher of the audio branch; "
                                      "null = the only teacher with modality 'audio'")
    image_teacher: str | None = Field(None, description="named teacher of the image branch; "
                                      "null = the only teacher with modality 'image'")
    loss_weight: float | None = Field(None, ge=0, description="w on the student's distillation "
                                      "terms; null = 1 (CCL-A, CCL-I) or 0.5 (CCL-AI), the reference")
    tau_audio: float = Field(0.5, gt=0, description="contrastive temperature of the audio pairs")
    tau_image: float = Field(0.1, gt=0, description="contrastive temperature of the image pairs")
    kl_weight: float = Field(0.5, ge=0, description="weight inside J (0.5 in the reference)")


@dataclass
class TeacherRef:
    """A frozen named teacher as handed to a distiller: its model and input key (modality)."""

    model: FeatureModel
    modality: str


def _pick(teachers: dict[str, TeacherRef], modality: str, name: str | None, where: str) -> str:
    if name is not None:
        if name not in teachers:
            raise ConfigError(f"{where}.params.{modality}_teacher",
                              f"'{name}' is not a named teacher; allowed: {', '.join(teachers) or 'none'}")
        if teachers[name].modality != modality:
            raise ConfigError(f"{where}.params.{modality}_teacher", f"teacher '{name}' has modality "
                              f"'{teachers[name].modality}', the {modality} branch needs '{modality}'")
        return name
    found = [n for n, t in teachers.items() if t.modality == modality]
    if len(found) != 1:
        raise ConfigError(f"{where}.params.{modality}_teacher", f"{len(found)} teachers have modality "
                          f"'{modality}' ({', '.join(found) or 'none'}); name one teacher here or "
                          f"define exactly one in 'teachers'")
    return found[0]


@METHODS.register("ccl", params=CCLParams, needs_teacher=False, multimodal=True,
                  tasks=("classification",))
class CCLDistiller(Distiller):
    """Video student + frozen named teachers + trainable composition heads (``extra_modules``)."""

    needs_teacher = False

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: CCLParams,
                 context: DistillContext) -> None:
        super().__init__(student, None, params, context)
        where = str(context.extras.get("path", "ccl"))
        teachers: dict[str, TeacherRef] = dict(context.extras.get("teachers") or {})
        examples: dict[str, torch.Tensor] = dict(context.extras.get("inputs") or {})
        if not teachers:
            raise ConfigError(f"{where}.method", "'ccl' needs named teachers: add a 'teachers' section "
                              "with an audio and/or image teacher")
        video_dim = describe(student, context.example)[1]
        self.weight = params.loss_weight if params.loss_weight is not None else (
            0.5 if params.variant == "AI" else 1.0)
        modalities = [m for m in TEACHER_MODALITIES if m[0].upper() in params.variant]
        self.branches: list[tuple[str, str, float]] = []  # (teacher name, modality, tau)
        self.heads = nn.ModuleDict()
        refs: dict[str, TeacherRef] = {}
        for modality in modalities:
            name = _pick(teachers, modality, getattr(params, f"{modality}_teacher"), where)
            ref = teachers[name]
            if modality not in examples:
                raise ConfigError(f"{where}.method", f"the dataset provides no '{modality}' input for "
                                  f"teacher '{name}'")
            dim = describe(ref.model, examples[modality])[1]
            if dim != video_dim:
                raise ConfigError(f"teachers.{name}.model", f"pooled embedding width {dim} differs from "
                                  f"the {where} student's {video_dim}; CCL compares the embeddings "
                                  "directly, so make the widths equal")
            self.heads[name] = CompositionHead(dim, video_dim, context.num_classes)
            self.branches.append((name, modality, getattr(params, f"tau_{modality}")))
            refs[name] = ref
            ref.model.eval()
            for p in ref.model.parameters():
                p.requires_grad_(False)
        object.__setattr__(self, "teacher_refs", refs)  # frozen, outside the module tree

    def train(self, mode: bool = True) -> "CCLDistiller":
        """Set the student and heads' mode; the named teachers stay in eval mode."""
        super().train(mode)
        for ref in getattr(self, "teacher_refs", {}).values():
            ref.model.eval()
        return self

    def extra_modules(self) -> list[nn.Module]:
        return [self.heads]

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        """L_v and every L_u of one batch (module docstring); audio terms skip ``audio_mask`` 0."""
        p, w, y = self.params, self.weight, batch["label"]
        f = self.student.features(batch[self.student_key])
        v, zv = f.pooled, f.logits
        losses = {"ce": F.cross_entropy(zv, y)}
        logs: dict[str, float] = {}
        for name, modality, tau in self.branches:
            keep = torch.ones_like(y, dtype=torch.bool)
            if modality == "audio" and "audio_mask" in batch:
                keep = batch["audio_mask"].reshape(-1) > 0.5
            ref = self.teacher_refs[name]
            with torch.no_grad():
                u = ref.model.features(batch[modality][keep]).pooled.float() if keep.any() else \
                    v.new_zeros(0, v.shape[1])
            yk, vk, zk = y[keep], v[keep], zv[keep]
            head = self.heads[name]
            c, zc = head(u, vk)  # student objective: reaches the video network and the head
            losses[f"{name}_ct"] = w * (symmetric_contrastive(vk, c, yk, tau)
                                        + symmetric_contrastive(vk, u, yk, tau))
            losses[f"{name}_kl"] = w * symmetric_kl(zk, zc, p.kl_weight)
            vd, zd = vk.detach(), zk.detach()  # head objective: the video network gets nothing
            c2, zc2 = head(u, vd)
            head_ce = F.cross_entropy(zc2, yk) if yk.numel() else zc2.sum() * 0.0
            losses[f"{name}_head"] = (head_ce + symmetric_contrastive(vd, c2, yk, tau)
                                      + symmetric_contrastive(c2, u, yk, tau)
                                      + symmetric_kl(zd, zc2, p.kl_weight))
            logs[f"{name}_kept"] = float(keep.float().mean())
            if yk.numel():
                logs[f"{name}_head_acc"] = float((zc2.argmax(1) == yk).float().mean())
        return StepOutput(logits=zv, losses=losses, logs=logs)
