"""The experiment file (one YAML file per experiment): ``schema`` holds the pydantic models of every
section, ``loading`` reads, overrides and validates them against the schema. This package imports
no registry: names are checked by :mod:`xkd.pipeline.checks` (``load``, ``validate``)."""

from xkd.config.loading import (_error_from_validation, apply_override, load_raw, load_with_overrides,
                                parse, parse_override)
from xkd.config.schema import (AugmentConfig, CGANSection, DataConfig, EvaluateConfig, ExperimentConfig,
                               ExplainConfig, ModelConfig, OptimizerConfig, OutputConfig, ReportConfig,
                               ScheduleConfig, StudentConfig, Strict, TeacherConfig, TrainConfig,
                               TrainOverride)

__all__ = ["AugmentConfig", "CGANSection", "DataConfig", "EvaluateConfig", "ExperimentConfig", "ExplainConfig",
           "ModelConfig", "OptimizerConfig", "OutputConfig", "ReportConfig", "ScheduleConfig", "StudentConfig",
           "Strict", "TeacherConfig", "TrainConfig", "TrainOverride", "_error_from_validation",
           "apply_override", "load_raw", "load_with_overrides", "parse", "parse_override"]
