"""Reading the experiment file: ``yaml.safe_load``, ``--set`` overrides and validation into the
schema. Every error becomes one :class:`ConfigError` line naming the field path, the bad value and
what is allowed. Registry names (datasets, models, methods, ...) are checked one layer up, by
:mod:`xkd.pipeline.checks`, so that this package imports no registry."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from xkd.config.schema import ExperimentConfig
from xkd.errors import ConfigError, UserError


MAX_FILE_BYTES = 2**20
"""Experiment files are short; anything larger is refused before it is read (1 MB)."""


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


def _section_model(tp: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``), or None."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if get_origin(tp) in (Union, UnionType):
        found = [m for m in map(_section_model, get_args(tp)) if m is not None]
        return found[0] if len(found) == 1 else None
    return None


def _section(root: type[BaseModel] | None, loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """Follow ``loc`` (field names, list indices, dict keys) from ``root`` to a section's model."""
    tp: Any = root
    for part in loc:
        model = _section_model(tp)
        if model is not None:
            if not isinstance(part, str) or part not in model.model_fields:
                return None
            tp = model.model_fields[part].annotation
            continue
        while get_origin(tp) in (Union, UnionType):  # e.g. list[X] | None
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return None
            tp = args[0]
        if get_origin(tp) in (list, tuple) and isinstance(part, int):
            tp = get_args(tp)[0]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    return _section_model(tp)


def _unknown_key(root: type[BaseModel] | None, loc: tuple[Any, ...], path: str) -> str:
    """'unknown key' with the section's allowed fields, and the sub-section that has the key."""
    key = loc[-1]
    section = _section(root, loc[:-1])
    if section is None:
        return f"unknown key '{key}'; check the spelling (see the documented fields of this section)"
    msg = f"unknown key '{key}'; allowed: {', '.join(section.model_fields)}"
    parent = path.rsplit(".", 1)[0] if "." in path else ""
    for name, info in section.model_fields.items():
        sub = _section(section, (name,))
        if sub is not None and key in sub.model_fields:
            return f"{msg} (did you mean {parent + '.' if parent else ''}{name}.{key}?)"
    close = difflib.get_close_matches(str(key), list(section.model_fields), n=1)
    return f"{msg} (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else msg


def _error_from_validation(e: ValidationError, prefix: str = "",
                           model: type[BaseModel] | None = None) -> ConfigError:
    """The first validation error as one ConfigError line; ``model`` (the validated class) lets an
    unknown key list its section's allowed fields."""
    err = e.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(
        ("function-", "literal[", "union[", "model-"))))
    path = _loc_to_path(tuple(err["loc"]))
    path = f"{prefix}.{path}" if prefix and path else (prefix or path)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = _unknown_key(model, loc, path)
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
            _need_mapping(node, parts[:i])
            if p not in node or node[p] is None:
                node[p] = [] if isinstance(nxt, int) else {}
            node = node[p]
    last = parts[-1]
    if isinstance(node, list) and isinstance(last, int):
        if last >= len(node):
            raise ConfigError(_loc_to_path(tuple(parts)), f"index out of range (len {len(node)})")
    elif isinstance(node, list):
        raise ConfigError(_loc_to_path(tuple(parts[:-1])), f"is a list; address an entry by index "
                                                           f"or name, not '{last}'")
    else:
        _need_mapping(node, parts[:-1])
    node[last] = value


def _need_mapping(node: Any, parts: list[str | int]) -> None:
    """``--set a.b=...`` needs ``a`` to be a mapping; anything else is one line naming ``a``."""
    if not isinstance(node, dict):
        raise ConfigError(_loc_to_path(tuple(parts)), f"is {type(node).__name__} {node!r}, not a "
                                                      "mapping; it has no fields to set")


def merge_base(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: mappings merge key by key (recursively); any other value in
    ``over`` (a list such as ``students``, a scalar) replaces the base's whole."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_base(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _with_base(raw: dict[str, Any], path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Resolve ``base: FILE`` (a path relative to the including file): the file's sections are laid
    on the base's (:func:`merge_base`); a base may have its own ``base``."""
    ref = raw.pop("base")
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError("base", f"must be the path of an experiment file, relative to {path.parent} (got {ref!r})")
    target = (path.parent / ref).resolve()
    if target in seen:
        raise ConfigError("base", f"'{ref}' in {path} includes itself (chain: "
                                  f"{' -> '.join(str(p) for p in (*seen, target))})")
    if not target.is_file():
        raise ConfigError("base", f"file not found: {target} (named in {path})")
    return merge_base(load_raw(target, seen), raw)


def check_file(path: str | Path) -> Path:
    """An experiment file exists and is small enough to be one (checked before anything heavy is
    imported or read: a 50 MB file is refused in a second, not after parsing it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"experiment file not found: {path}")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{path}: {size / 2**20:.1f} MB is too large for an experiment file (at most "
                        f"{MAX_FILE_BYTES // 2**20} MB); is this the right file?")
    return path


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read an experiment YAML with ``safe_load``; errors name the file. A top-level ``base: FILE``
    is resolved first: the file's sections are laid on those of FILE (see :func:`merge_base`)."""
    path = check_file(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} on line {line}); "
                        "save the file as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raise UserError(f"{path} is empty; an experiment file names at least its data, teacher and "
                        "students (see experiments/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections (data, teacher, ...), "
                        f"not a {type(raw).__name__}")
    raw.pop("format_version", None)
    if "base" in raw:
        raw = _with_base(raw, path, (*_seen, path.resolve()))
    return raw


def parse(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw mapping into :class:`ExperimentConfig` (schema only; no registry lookups)."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise _error_from_validation(e, model=ExperimentConfig) from None


def load_with_overrides(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw mapping of an experiment file with ``--set`` overrides applied."""
    raw = load_raw(path)
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(raw, parts, copy.deepcopy(value))
    return raw
