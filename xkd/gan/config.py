"""Configuration of the cGAN-KD machinery (Ding et al., cGAN-KD, ESWA 2023; seed_methods.md section 5).

``GANConfig`` sizes and trains the conditional GAN (section 5.2), ``SubsampleConfig`` the cDR-RS
density-ratio model and rejection sampler (M1, section 5.3), ``FilterConfig`` the teacher filter and
relabelling (M2, section 5.4). Defaults are CPU-sized: one GAN step (2 D updates + 1 G update,
batch 32) costs ~0.24 CPU-seconds at 24 px and ~0.30 at 32 px on one thread, so the default 1000
steps take ~4-5 minutes. On ``shapes`` (textured, cluttered backgrounds) 1000 steps give diverse,
class-coloured object blobs, not yet clean shapes: more steps, or simpler backgrounds, buy quality.
"""

from __future__ import annotations

from typing import Any

from typing import Literal

from pydantic import Field, field_validator

from xkd.config import Strict


class GANConfig(Strict):
    """Conditional GAN: DCGAN-style G with conditional BN, projection D, hinge loss, EMA G."""

    z_dim: int = Field(64, ge=1, description="latent size")
    g_channels: int = Field(32, ge=4, description="base channels of the generator")
    d_channels: int = Field(32, ge=4, description="base channels of the discriminator")
    embed_dim: int = Field(64, ge=1, description="label embedding size (class embedding or "
                           "embedding of the normalised continuous label)")
    steps: int = Field(1000, ge=1, description="generator updates")
    d_steps: int = Field(2, ge=1, description="discriminator updates per generator update")
    batch_size: int = Field(32, ge=2)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas of both networks")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="EMA of the generator's weights")
    ema_start: int = Field(100, ge=0, description="step before which the EMA copies G")
    diffaugment: bool = Field(True, description="differentiable translation + colour augmentation "
                              "of real and fake images before D (Zhao et al. 2020)")
    checkpoint_every: int = Field(250, ge=1, description="steps between writes of last.pt")
    log_every: int = Field(50, ge=1, description="steps between rows of history.jsonl")
    vicinity: Literal["hard", "soft"] = Field("soft", description="regression: CcGAN HVDL or SVDL")
    kappa: float | None = Field(None, gt=0, description="regression: vicinity half-width in "
                                "normalised label units; null = kappa_gaps x the largest gap")
    kappa_gaps: float = Field(5.0, gt=0, description="kappa = kappa_gaps x max gap between sorted "
                              "unique normalised labels (reference: 5)")
    sigma: float | None = Field(None, ge=0, description="regression: std of the Gaussian noise on "
                                "target labels; null = rule of thumb 1.06 std(y) n^(-1/5)")

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must both be in [0, 1); got {list(v)}")
        return v


class SubsampleConfig(Strict):
    """cDR-RS: label-conditioned MLP density-ratio model (SP Bregman loss) + rejection sampling."""

    enabled: bool = Field(True, description="false = keep every generated sample (ablation)")
    steps: int = Field(1500, ge=1, description="ratio-model updates")
    batch_size: int = Field(256, ge=2, description="real and fake samples per ratio-model update")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    hidden: int = Field(128, ge=1, description="width of the ratio MLP")
    dropout: float = Field(0.2, ge=0, lt=1)
    penalty: float = Field(0.01, ge=0, description="lambda of (E_fake[r] - 1)^2")
    burn_in: int = Field(500, ge=1, description="proposals that initialise the running max M")
    proposal_batch: int = Field(256, ge=1, description="proposals per rejection-sampling round")


REFERENCE_QUANTILE = {"classification": 0.9, "regression": 0.7}
"""rho of the teacher filter per task in cGAN-KD (seed_methods.md 5.4; the paper's Tables 3-7)."""


class FilterConfig(Strict):
    """Teacher filtering (per-class CE quantile / absolute-error quantile) and relabelling."""

    enabled: bool = Field(True, description="false = keep every subsampled fake (ablation)")
    quantile: float | None = Field(None, description="keep fakes whose teacher loss is <= this "
                                   "quantile, in (0, 1]; null = the reference's rho for the task: "
                                   "0.9 classification, 0.7 regression")
    relabel: bool = Field(True, description="regression: replace kept labels by the teacher's "
                          "prediction")

    @field_validator("quantile", mode="before")  # before the finite check: nan names the range
    @classmethod
    def _quantile(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 < v <= 1:
            raise ValueError("quantile must be in (0, 1] (1 keeps every fake)")
        return v

    def resolved(self, task: str) -> "FilterConfig":
        """A copy with ``quantile`` set: as given, or the reference's rho for ``task``."""
        q = self.quantile if self.quantile is not None else REFERENCE_QUANTILE[task]
        return self.model_copy(update={"quantile": q})
