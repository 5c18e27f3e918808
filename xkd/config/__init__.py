"""The experiment file (one YAML file per experiment): ``schema`` holds the pydantic models of every
section, ``loading`` reads, overrides, validates and dumps them. Import from here:
``from xkd.config import load, ExperimentConfig``."""

from xkd.config.loading import (_error_from_validation, apply_override, check_names, load, load_raw,
                                method_params, parse_override, resolved_dict, validate)
from xkd.config.schema import (AugmentConfig, CGANSection, DataConfig, EvaluateConfig, ExperimentConfig,
                               ExplainConfig, ModelConfig, OptimizerConfig, OutputConfig, ReportConfig,
                               ScheduleConfig, StudentConfig, Strict, TeacherConfig, TrainConfig,
                               TrainOverride)

__all__ = ["AugmentConfig", "CGANSection", "DataConfig", "EvaluateConfig", "ExperimentConfig", "ExplainConfig",
           "ModelConfig", "OptimizerConfig", "OutputConfig", "ReportConfig", "ScheduleConfig", "StudentConfig",
           "Strict", "TeacherConfig", "TrainConfig", "TrainOverride", "_error_from_validation",
           "apply_override", "check_names", "load", "load_raw", "method_params", "parse_override",
           "resolved_dict", "validate"]
