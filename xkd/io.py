"""Atomic, versioned file writes for run folders (DESIGN section 5).

Every writer goes to a temporary file in the same folder and then ``os.replace``s it, so a reader
never sees half a file. JSON and YAML files carry ``format_version``; a reader refuses a newer one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from xkd import FORMAT_VERSION
from xkd.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: dict[str, Any], versioned: bool = True) -> None:
    """Write ``obj`` as JSON atomically, adding ``format_version`` first."""
    body = {"format_version": FORMAT_VERSION, **obj} if versioned else obj
    write_text(path, json.dumps(_jsonable(body), indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    body = {"format_version": FORMAT_VERSION, **obj}
    write_text(path, yaml.safe_dump(_jsonable(body), sort_keys=False))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a versioned JSON file; a missing, corrupt or newer-format file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt JSON file {path}: {e.msg if hasattr(e, 'msg') else e}") from None
    check_version(obj, path)
    return obj


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a versioned YAML file (``safe_load``); missing, corrupt or newer-format is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing file {path}; is this a run folder?")
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt YAML file {path}: {str(e).splitlines()[0]}") from None
    check_version(obj, path)
    return obj


def check_version(obj: Any, path: str | os.PathLike) -> None:
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not an xkd file (expected a mapping with format_version)")
    v = obj.get("format_version")
    if not isinstance(v, int):
        raise UserError(f"{path} has no format_version; it was not written by xkd")
    if v > FORMAT_VERSION:
        raise UserError(
            f"{path} has format_version {v}, newer than this xkd ({FORMAT_VERSION}); upgrade xkd"
        )


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one JSON line (history files); each line carries ``format_version``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(_jsonable({"format_version": FORMAT_VERSION, **row})) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints are replaced whole, never half-written)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint safely (``weights_only=True``); a missing or corrupt file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing checkpoint {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path}: {first[:200]}") from None


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Compressed ``.npz`` written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())
