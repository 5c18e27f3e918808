"""``ffsd``: online distillation by feature fusion and self-distillation (Li et al., IEEE TNNLS
2022, arXiv 2103.14473; reference notes section 2). No pre-trained teacher: m common students, a
fusion module Φ, the student leader (with TransFusion Ψ) and self-distillation modules G are
trained together from scratch; only the leader is deployed (``Distiller.student``).

Losses (T = 2; every λ warmed up by :func:`~xkd.distill.ffsd.modules.warmup_weight`), notes 2.4:

* common student k:  CE(z_k, y) + T²/(m−1)·Σ_{j≠k} KL(p_j^T ‖ p_k^T)  [peers detached]
  + [k ≥ 2]·λ_div·(L_div + L_sdiv)        -> ``common_ce``, ``common_kd``, ``common_div``
* fusion Φ:          CE(z_f, y) + T²·KL(p̄^T ‖ p_f^T), z̄ = mean_k z_k detached
                                            -> ``fusion_ce``, ``fusion_kd``
* leader L:          CE(z_L, y) + T²·KL(p_f^T ‖ p_L^T) + λ_f·[D(a(F_L), a(F_fuse))
  + D(a(Ψ(F_L)), a(concat_k F_k)) + Σ_{j<J} D(a(F_L⁽ʲ⁾), a(G_L⁽ʲ⁾(F_fuse)))]
                                            -> ``ce``, ``kd``, ``leader_fusion``, ``leader_trans``,
                                               ``leader_sd``
* SD modules:        λ_sd·Σ_{j<J} [D(G⁽ʲ⁾, F⁽ʲ⁾) + D(a(G⁽ʲ⁾), a(F⁽ʲ⁾))] on the owner's own detached
                     maps, G in train mode  -> ``sd``

Update order (notes 2.5): the reference forwards every network once, then steps the common
students, Φ, the leader and finally the G modules, each from its own loss. Every loss above reaches
only its own parameters (peer logits, fusion inputs/outputs and G outputs used as targets are
detached; G runs in eval mode under ``no_grad`` when it provides targets), so the engine's single
backward of the summed losses gives each parameter exactly the gradient of its own loss; the main
optimiser (common students, Φ with weight decay ``fusion_weight_decay``, leader and Ψ: SGD from
``train.optimizer``) then steps, then the separately declared ``sd`` optimiser (Adam, lr 1e-3)
steps (``optimizer_groups()``). All optimisers follow ``train.schedule``, as in the official code.

Common students are deep copies of the leader's architecture, re-initialised (module defaults,
then Kaiming-normal convs and BN 1/0 as the built-in models). Their and Φ's training accuracies
(and the ensemble's) are logged as ``acc_common{k}``, ``acc_fusion``, ``acc_ensemble``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from xkd.distill.base import METHODS, DistillContext, Distiller, MethodParams, StepOutput
from xkd.distill.ffsd.modules import (FusionModule, SelfDistillationModule, TransFusion, attention,
                                      attention_distance, diversity_loss, diversity_target,
                                      shifted_feature, warmup_weight)
from xkd.distill.kd import require_classification
from xkd.losses import kd_loss
from xkd.errors import UserError, warn
from xkd.models.base import FeatureModel, describe
from xkd.models.cifar_resnet import init_weights


class FFSDParams(MethodParams):
    num_common: int = Field(2, ge=2, description="m common students (the reference's --model_num)")
    T: float = Field(2.0, gt=0, description="temperature of every KL term")
    lambda_div: float = Field(1e-5, ge=0, description="λ_div of the diversity and shifted-SD terms")
    lambda_fusion: float = Field(10.0, ge=0, description="λ_f of the leader's attention terms")
    lambda_sd: float = Field(1000.0, ge=0, description="λ_sd of the SD modules' own training loss")
    warmup_epochs: int = Field(5, ge=0, description="exponential warm-up of every λ (0 = none)")
    fusion_weight_decay: float = Field(1e-5, ge=0, description="weight decay of Φ (reference 1e-5)")
    sd_optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimiser of the G modules")
    sd_lr: float = Field(1e-3, gt=0, description="learning rate of the G modules")
    sd_weight_decay: float | None = Field(None, ge=0, description="weight decay of the G modules; "
                                          "null = train.optimizer.weight_decay (reference)")


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with newly drawn weights (and reset BatchNorm statistics)."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        reset = getattr(mod, "reset_parameters", None)
        if mod is not m and callable(reset):
            reset()
    init_weights(m)
    return m


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode (G providing targets), restoring its previous mode."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


def _acc(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.detach().argmax(1) == y).float().mean())


@METHODS.register("ffsd", params=FFSDParams, needs_teacher=False, tasks=("classification",))
class FFSDDistiller(Distiller):
    """FFSD: the leader is ``student``; common students, Φ, Ψ and G are extra modules."""

    needs_teacher = False

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, params: FFSDParams,
                 context: DistillContext) -> None:
        require_classification("ffsd", context)
        super().__init__(student, None, params, context)  # online: any teacher is ignored
        e, w = context.epochs, params.warmup_epochs
        if 0 < w and e < w:  # the 1-indexed last epoch e never reaches W: every λ stays below 1
            field = f"{context.extras.get('path', 'ffsd')}.params.warmup_epochs"
            warn(f"{field}: warm-up {w} with {e} epoch{'s' if e != 1 else ''}: every λ reaches at most "
                 f"{warmup_weight(1.0, e, w):.2f} of its value (last epoch); set {field} to at most {e} "
                 "(0 = none) or train longer")
        ex = context.example if context.example.dim() == 4 else context.example.unsqueeze(0)
        dev = next(student.parameters()).device
        stages, _ = describe(student, ex.to(dev))
        if not stages:
            raise UserError("ffsd needs a student with spatial stages (feature maps); "
                            "use a backbone such as resnet8 or mobilenetv2")
        self.n_stages, c = len(stages), stages[-1].channels
        m = params.num_common
        self.commons = nn.ModuleList(fresh_copy(student) for _ in range(m))
        self.fusion = FusionModule(c, m, context.num_classes)
        self.trans_fusion = TransFusion(c, m)
        self.sd_common = nn.ModuleList(SelfDistillationModule(stages) for _ in range(m - 1))
        self.sd_leader = SelfDistillationModule(stages)
        self.to(dev)

    # -- engine hooks -------------------------------------------------------------------------
    def extra_modules(self) -> list[nn.Module]:
        return [self.commons, self.fusion, self.trans_fusion, self.sd_common, self.sd_leader]

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.fusion.parameters()),
                 "weight_decay": self.params.fusion_weight_decay}]

    def optimizer_groups(self) -> dict[str, dict]:
        p = self.params
        spec = {"params": list(self.sd_common.parameters()) + list(self.sd_leader.parameters()),
                "name": p.sd_optimizer, "lr": p.sd_lr}
        if p.sd_weight_decay is not None:
            spec["weight_decay"] = p.sd_weight_decay
        return {"sd": spec}

    def weights(self, epoch: int) -> tuple[float, float, float]:
        """(λ_div, λ_f, λ_sd) after the warm-up, for the engine's 0-indexed ``epoch``."""
        p, e = self.params, epoch + 1
        return (warmup_weight(p.lambda_div, e, p.warmup_epochs),
                warmup_weight(p.lambda_fusion, e, p.warmup_epochs),
                warmup_weight(p.lambda_sd, e, p.warmup_epochs))

    # -- losses -------------------------------------------------------------------------------
    def _targets(self, sd: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """G's outputs used as targets: eval mode, no gradient."""
        with eval_mode(sd), torch.no_grad():
            return [g.float() for g in sd(x.detach().float())]

    def _sd_train_loss(self, sd: nn.Module, stages: list[torch.Tensor]) -> torch.Tensor:
        outs = sd(stages[-1].detach().float())
        total = stages[-1].new_zeros((), dtype=torch.float32)
        for g, f in zip(outs, stages[:-1]):
            f = f.detach()
            total = total + attention_distance(g, f) + attention_distance(attention(g), attention(f))
        return total

    def forward(self, batch: dict[str, torch.Tensor], epoch: int) -> StepOutput:
        p, x, y = self.params, batch["image"], batch["label"]
        lam_div, lam_f, lam_sd = self.weights(epoch)
        m, T = p.num_common, p.T
        lead = self.student.features(x)
        feats = [net.features(x) for net in self.commons]
        logits = [f.logits.float() for f in feats]
        fusion_in = torch.cat([f.stages[-1].detach() for f in feats], dim=1)
        fused, z_f = self.fusion(fusion_in)
        fused, z_f = fused.float(), z_f.float()

        # common students: CE + mutual KD (peers detached) + diversity for k >= 2
        ce_c = sum(F.cross_entropy(z, y) for z in logits)
        kd_c = sum(kd_loss(logits[k], logits[j].detach(), T)
                   for k in range(m) for j in range(m) if j != k) / (m - 1)
        div = x.new_zeros((), dtype=torch.float32)
        for k in range(1, m):
            prev = feats[k - 1].stages[-1].detach()
            t, yhat, n = diversity_target(attention(prev))
            g = self._targets(self.sd_common[k - 1], shifted_feature(prev, t, yhat, n))
            sdiv = sum((attention_distance(attention(s), attention(gj))
                        for s, gj in zip(feats[k].stages[:-1], g)), div.new_zeros(()))
            div = div + diversity_loss(attention(feats[k].stages[-1]), t) + sdiv

        # fusion module: CE + KD from the detached ensemble of common students
        ensemble = torch.stack(logits).mean(0).detach()
        # leader: CE + KD from Φ + attention terms towards the (detached) fusion side
        fused_t = fused.detach()
        g_lead = self._targets(self.sd_leader, fused_t)
        lead_sd = sum((attention_distance(attention(s), attention(gj))
                       for s, gj in zip(lead.stages[:-1], g_lead)), div.new_zeros(()))
        z_l = lead.logits.float()
        losses = {
            "ce": F.cross_entropy(z_l, y),
            "kd": kd_loss(z_l, z_f.detach(), T),
            "leader_fusion": lam_f * attention_distance(attention(lead.stages[-1]), attention(fused_t)),
            "leader_trans": lam_f * attention_distance(attention(self.trans_fusion(lead.stages[-1])),
                                                       attention(fusion_in)),
            "leader_sd": lam_f * lead_sd,
            "common_ce": ce_c,
            "common_kd": kd_c,
            "common_div": lam_div * div,
            "fusion_ce": F.cross_entropy(z_f, y),
            "fusion_kd": kd_loss(z_f, ensemble, T),
        }
        # SD modules: reconstruct their owner's shallow maps from its own detached last map
        sd = self._sd_train_loss(self.sd_leader, lead.stages)
        for k in range(1, m):
            sd = sd + self._sd_train_loss(self.sd_common[k - 1], feats[k].stages)
        losses["sd"] = lam_sd * sd
        logs = {f"acc_common{k}": _acc(z, y) for k, z in enumerate(logits)}
        logs.update(acc_fusion=_acc(z_f, y), acc_ensemble=_acc(ensemble, y),
                    ffsd_warmup=warmup_weight(1.0, epoch + 1, p.warmup_epochs))
        return StepOutput(logits=lead.logits, losses=losses, logs=logs)

    # -- export -------------------------------------------------------------------------------
    @torch.no_grad()
    def attention_maps(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per leader stage j: {"stage{j}": (B,2,h,w)}: channel 0 the leader's attention a(F_L⁽ʲ⁾),
        channel 1 the map it is distilled towards: a(F_fuse) for the last stage, a(G_L⁽ʲ⁾(F_fuse))
        for the others. Each map divided by its per-sample maximum. Eval mode, modes restored."""
        modes = [mod.training for mod in self.modules()]
        self.eval()
        try:
            lead = self.student.features(images)
            fusion_in = torch.cat([net.features(images).stages[-1] for net in self.commons], 1)
            fused, _ = self.fusion(fusion_in)
            targets = self.sd_leader(fused) + [fused]
        finally:
            for mod, was in zip(self.modules(), modes):
                mod.training = was

        def norm(a: torch.Tensor) -> torch.Tensor:
            a = attention(a)
            return a / a.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)

        return {f"stage{j}": torch.cat([norm(s), norm(t)], dim=1)
                for j, (s, t) in enumerate(zip(lead.stages, targets))}
