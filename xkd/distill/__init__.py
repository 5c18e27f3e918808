"""Distillation methods (DESIGN section 3.4): one file (or small package) per method, each
registered in ``METHODS`` when this package imports it (every public module is imported).

``build_distiller(method, student, teacher, params, context)`` validates ``params`` (a dict or the
method's pydantic model) and builds the :class:`Distiller`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from xkd.distill.base import (METHODS, DistillContext, Distiller, MethodParams, StepOutput,
                              list_methods, require_features)
from xkd.distill.hkd import dataset_labels
from xkd.errors import ConfigError, UserError
from xkd.models.base import FeatureModel
from xkd.registry import import_members

__all__ = ["METHODS", "Distiller", "StepOutput", "DistillContext", "MethodParams", "list_methods",
           "build_distiller", "dataset_labels", "validated_params"]


def _validation_error(e: ValidationError, prefix: str) -> ConfigError:
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    path = f"{prefix}.{loc}" if loc else prefix
    msg = err["msg"].replace("Value error, ", "")
    if err["type"] == "extra_forbidden":
        msg = "unknown parameter; check the spelling"
    elif "input" in err and not isinstance(err["input"], (dict, list)):
        msg = f"{msg} (got {err['input']!r})"
    return ConfigError(path, msg)


def validated_params(method: str, params: dict[str, Any]) -> Any:
    """``params`` validated into the method's registered schema (unchanged when it has none)."""
    e = METHODS.entry(method)
    return e.params.model_validate(params) if e.params is not None else params


def _check_input_keys(entry: Any, method: str, where: str, context: DistillContext) -> None:
    """Only methods registered with ``any_input`` or ``multimodal`` read keys other than image."""
    odd = [(k, str(context.extras[k])) for k in ("student_key", "teacher_key")
           if str(context.extras.get(k, "image")) != "image"]
    if odd and not (entry.meta.get("any_input") or entry.meta.get("multimodal")):
        key, value = odd[0]
        ok = [n for n in METHODS.names() if METHODS.entry(n).meta.get("any_input")
              or METHODS.entry(n).meta.get("multimodal")]
        field, who = ("modality", "student") if key == "student_key" else ("teacher", "teacher")
        raise UserError(f"{where}.{field}: method '{method}' reads image input only, got {who} "
                        f"modality '{value}'; methods for other modalities: {', '.join(ok)}")


def build_distiller(method: str, student: FeatureModel, teacher: FeatureModel | None,
                    params: dict[str, Any] | BaseModel | None, context: DistillContext) -> Distiller:
    """Build a registered method; dict params are validated (errors name ``<path>.params.<field>``).

    ``context.extras['path']`` (e.g. ``students[1]``) prefixes error paths when present.
    """
    where = str(context.extras.get("path", "")) or method
    entry = METHODS.entry(method, path=f"{where}.method")
    if isinstance(entry.factory, type) and issubclass(entry.factory, Distiller):
        require_features(entry.factory, student, teacher, where)
    if params is None:
        params = {}
    if isinstance(params, dict):
        try:
            params = entry.params.model_validate(params) if entry.params is not None else params
        except ValidationError as e:
            raise _validation_error(e, f"{where}.params") from None
    elif entry.params is not None and not isinstance(params, entry.params):
        raise UserError(f"{where}.params: expected {entry.params.__name__}, got "
                        f"{type(params).__name__}")
    _check_input_keys(entry, method, where, context)
    if entry.meta.get("needs_teacher", True) and teacher is None:
        raise UserError(f"{where}: method '{method}' needs a teacher; add a 'teacher' section or "
                        f"use method 'ce'")
    tasks = entry.meta.get("tasks", ("classification", "regression"))
    if context.task not in tasks:
        raise UserError(f"{where}.method: '{method}' supports {' and '.join(tasks)} only, but the "
                        f"dataset's task is '{context.task}'; use ce, reviewkd or cgan_kd")
    return entry.factory(student, teacher, params, context)


import_members(__name__)  # every method registers itself
