"""Config checks of cGAN-KD in the experiment flow (issue 8; docs/CONTRACTS.md "cGAN-KD in the flow").

Run by :func:`xkd.pipeline.checks.check_names` (before any run folder exists): the ``cgan`` section's
``gan`` and ``subsample`` mappings against :class:`GANConfig`/:class:`SubsampleConfig`; every
``cgan_kd`` student has a ``cgan`` section (unless it reads a ``fake_data`` file), and its
``init_from`` names an *earlier* student. Each problem is one :class:`ConfigError` line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from xkd.config import _error_from_validation
from xkd.gan.config import GANConfig, SubsampleConfig
from xkd.distill import validated_params
from xkd.errors import ConfigError


def _validated(model: type[BaseModel], raw: dict[str, Any], path: str) -> BaseModel:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise _error_from_validation(e, path, model) from None


def gan_config(section: Any) -> GANConfig:
    """The validated GAN settings of a ``cgan`` section."""
    return _validated(GANConfig, section.gan, "cgan.gan")  # type: ignore[return-value]


def subsample_config(section: Any, enabled: bool = True) -> SubsampleConfig:
    """The validated cDR-RS settings of a ``cgan`` section, ``enabled`` set per student."""
    base = _validated(SubsampleConfig, section.subsample, "cgan.subsample")
    return base.model_copy(update={"enabled": enabled})  # type: ignore[return-value]


def check_cgan(cfg: Any) -> None:
    """Raise one ConfigError line for the first cGAN-KD configuration mistake."""
    if cfg.cgan is not None:
        gan_config(cfg.cgan)
        subsample_config(cfg.cgan)
    names: list[str] = []
    for i, s in enumerate(cfg.students):
        if s.method == "cgan_kd":
            p = validated_params(s.method, s.params)
            where = f"students[{i}].params"
            if cfg.cgan is None and p.fake_data is None:
                raise ConfigError(f"students[{i}].method", "'cgan_kd' needs a top-level 'cgan' "
                                  "section (or params.fake_data naming a processed fake set)")
            if p.init_from is not None and p.init_from not in names:
                allowed = ", ".join(names) or "none (this is the first student)"
                raise ConfigError(f"{where}.init_from", f"'{p.init_from}' is not an earlier student; "
                                  f"allowed: {allowed}")
            if p.init_from is not None:
                src = next(t for t in cfg.students if t.name == p.init_from)
                if src.model.model_dump() != s.model.model_dump():
                    raise ConfigError(f"{where}.init_from", f"'{p.init_from}' has another model "
                                      "(fine-tuning needs the same architecture)")
        names.append(s.name)


def resolved_cgan(section: Any) -> dict[str, Any]:
    """The ``cgan`` section with every GAN and subsampling default written out."""
    return {"gan": gan_config(section).model_dump(mode="json"),
            "subsample": subsample_config(section).model_dump(mode="json"),
            "features": section.features}
