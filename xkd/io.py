"""Atomic, versioned file writes for run folders (DESIGN section 5).

Every writer goes to a temporary file in the same folder and then ``os.replace``s it, so a reader
never sees half a file. JSON and YAML files carry ``format_version``; a reader refuses a newer one.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml

from xkd import FORMAT_VERSION
from xkd.errors import UserError


def write_error(path: str | os.PathLike, e: OSError) -> UserError:
    """One line for a failed write: the file, the cause (no space, read-only, permission ...) and
    what to do; what was written before stays intact, so ``--resume`` continues once it is fixed."""
    cause = e.strerror or str(e) or type(e).__name__
    code = f" [errno {e.errno}]" if e.errno else ""
    return UserError(f"cannot write {Path(path).resolve()}: {cause}{code}; what was complete is kept: "
                     "fix the cause, then continue with --resume")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temp(path: Path) -> Path:
    """A fresh ``.NAME.RANDOM.tmp`` beside ``path``, created with mode 0666 minus the umask (the
    permissions of an ordinary file; ``tempfile.mkstemp`` would give 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically (file
    and folder fsynced). An ``OSError`` becomes one :class:`UserError` line naming the file."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def _write_file(tmp: Path, data: bytes) -> None:
    """The one place bytes reach the disk (tests inject faults here)."""
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        _write_file(tmp, data)


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
    """Append one JSON line (history files); each line carries ``format_version``.

    The line goes out in one ``write`` and is fsynced. A kill in the middle leaves at most a torn
    last line, which :func:`read_jsonl` drops (and the next append starts on a line of its own)."""
    path = Path(path)
    line = (json.dumps(_jsonable({"format_version": FORMAT_VERSION, **row})) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.ftruncate(fd, _last_newline(fd, size))  # drop a torn tail before appending
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise write_error(path, e) from None


def _last_newline(fd: int, size: int) -> int:
    """Offset just past the last ``\\n`` of the file (0 when there is none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - 65536)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def read_jsonl(path: str | os.PathLike, warn: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file. A torn last line (a write cut short by a kill or a full disk) is
    dropped with a word to ``warn``; any other bad line is a :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    rows = []
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == last:
                if warn is not None:
                    warn(f"{path}: dropped a torn last line (a write was cut short); it is written again")
                break
            raise UserError(f"corrupt JSON lines file {path}: line {i + 1} is not JSON") from None
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
        raise UserError(f"cannot load checkpoint {path}: {_load_reason(e)}") from None


def _load_reason(e: Exception) -> str:
    """Torch's reason in full (one line). For a weights-only refusal, the paragraph saying what it
    refused, not the advice to load with ``weights_only=False`` (which xkd never does)."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    if text.startswith("Weights only load failed"):
        parts = [p.strip() for p in text.split("\n\n") if p.strip()]
        reason = [p for p in parts[1:] if not p.startswith("Check the documentation")]
        if reason:
            return ("refused by torch.load(weights_only=True): " + " ".join(reason) +
                    " (xkd never unpickles code; save plain tensors, e.g. a state_dict)")
    return text


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Compressed ``.npz`` written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())
