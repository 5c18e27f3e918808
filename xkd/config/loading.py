"""Loading the experiment file: ``yaml.safe_load``, ``--set`` overrides, validation into the schema,
registry-name checks and the resolved dump written as ``RUN/config.yaml``. Every error becomes one
:class:`ConfigError` line naming the field path, the bad value and what is allowed."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from xkd.config.schema import ExperimentConfig, ModelConfig, StudentConfig
from xkd.errors import ConfigError, UserError


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

