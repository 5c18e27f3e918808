"""Who writes a run folder (DESIGN 5; issue 14): one writer at a time, and whether it is alive.

:func:`lock_run` holds an advisory ``fcntl.flock`` on ``RUN/.lock`` for the whole run (the kernel
releases it when the process dies, so a killed run's folder is taken over). ``status.json``
carries the state, the writer's pid and host, when it started and a heartbeat (:func:`heartbeat`:
a thread every ``HEARTBEAT_SECONDS`` and :func:`beat` at every epoch's end), so :func:`run_state`
tells a live run from an interrupted one: by the lock (or pid) on the writer's host, by the
heartbeat's age elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from xkd import io
from xkd.errors import UserError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no lock; run_state relies on the heartbeat alone
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
HEARTBEAT_SECONDS = 15.0
"""The heartbeat thread's period; :func:`beat` also writes one at every epoch's end."""
STALE_SECONDS = 120.0
"""A writer on another host whose heartbeat is older than this is taken for dead."""


# ----------------------------------------------------------------------------- one writer


@dataclass
class RunLock:
    """The exclusive lock on ``RUN/.lock``; ``previous`` is what the last holder wrote there."""

    path: Path
    fd: int
    previous: dict[str, Any]
    key: str = ""
    count: int = 1

    def release(self) -> None:
        """Drop one hold; the lock goes when the last holder of this process lets go."""
        self.count -= 1
        if self.count > 0 or self.fd < 0:
            return
        with contextlib.suppress(OSError):
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1
        _held.pop(self.key, None)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _holder(fd: int) -> dict[str, Any]:
    try:
        obj = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


_held: dict[str, RunLock] = {}


def lock_run(run_dir: str | Path, wait: float = 1.0) -> RunLock:
    """Take the one-writer lock of ``run_dir`` (created if needed) or raise one UserError line
    naming the process that holds it. A lock left by a killed process is free again (the kernel
    drops ``flock`` locks with their process): it is taken over. Within one process the lock is
    re-entrant (``xkd.run`` takes it when it picks the folder, the session again)."""
    root = Path(run_dir)
    key = str(root.resolve())
    if key in _held:
        _held[key].count += 1
        return _held[key]
    path = root / LOCK
    if fcntl is None:
        root.mkdir(parents=True, exist_ok=True)
        return RunLock(path, -1, {}, key)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise io.write_error(path, e) from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:  # a reader's probe (run_state) holds it for an instant
                time.sleep(0.05)
                continue
            h = _holder(fd)
            os.close(fd)
            who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}"
            raise UserError(f"{root.resolve()} is being written by another xkd process ({who}); wait "
                            "for it to end or stop it, or pick another --out") from None
    previous = _holder(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode("utf-8"), 0)
    except OSError as e:
        os.close(fd)
        raise io.write_error(path, e) from None
    _held[key] = RunLock(path, fd, previous, key)
    return _held[key]


# ----------------------------------------------------------------------------- status

_status_lock = threading.Lock()
_active: dict[str, Path] = {}


def read_status(root: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads((root / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_status(run_dir: str | Path, state: str, **extra: Any) -> None:
    """``status.json``: state (running, failed, complete), the writer's pid and host, when it
    started and its heartbeat (now); a failure's one-line ``error`` goes in ``extra``."""
    root = Path(run_dir)
    now = time.time()
    with _status_lock:
        old = read_status(root) or {}
        mine = old.get("pid") == os.getpid() and old.get("host") == socket.gethostname()
        started = old.get("started", now) if mine else now
        io.write_json(root / "status.json", {"state": state, "time": now, "pid": os.getpid(),
                                             "host": socket.gethostname(), "started": started,
                                             "heartbeat": now, **extra})


def _beat_once(root: Path) -> None:
    with contextlib.suppress(UserError, OSError), _status_lock:
        old = read_status(root)
        if old is None or old.get("state") != "running" or old.get("pid") != os.getpid():
            return
        io.write_json(root / "status.json", {**{k: v for k, v in old.items() if k != "format_version"},
                                             "heartbeat": time.time()})


def beat() -> None:
    """Refresh the heartbeat of every run this process writes (called at each epoch's end)."""
    for root in list(_active.values()):
        _beat_once(root)


@contextlib.contextmanager
def heartbeat(run_dir: str | Path, interval: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """While the block runs, a daemon thread refreshes ``status.json``'s heartbeat every
    ``interval`` seconds (and :func:`beat` does at every epoch's end)."""
    root = Path(run_dir)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            _beat_once(root)

    t = threading.Thread(target=loop, name="xkd-heartbeat", daemon=True)
    _active[str(root)] = root
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        _active.pop(str(root), None)


def _lock_free(path: Path) -> bool | None:
    """Whether nobody holds ``path``'s flock (None when there is no lock file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(folder: str | Path, status: dict[str, Any] | None = None) -> str:
    """``'running'``, ``'interrupted'`` (its writer is gone), ``'failed'``, ``'complete'`` or
    ``'unknown'`` (no status.json and no summary.json). A running status is checked: on the
    writer's host by its lock (or pid), elsewhere by the age of its heartbeat."""
    root = Path(folder)
    status = status if status is not None else read_status(root)
    if status is None:
        return "complete" if (root / "summary.json").is_file() else "unknown"
    state = str(status.get("state") or "unknown")
    if state != "running":
        return state
    pid, host = status.get("pid"), status.get("host")
    if not isinstance(pid, int) or not host:
        return "running"  # written by an xkd that did not record its writer: cannot tell
    if host == socket.gethostname() and fcntl is not None:
        free = _lock_free(root / LOCK)
        alive = (not free) if free is not None else _pid_alive(pid)
    else:
        beat_at = status.get("heartbeat", status.get("time", 0))
        alive = isinstance(beat_at, (int, float)) and time.time() - beat_at <= STALE_SECONDS
    if alive:
        return "running"
    # summary.json is written last: a dead writer that got that far (or a later --resume that
    # found the run complete) left a complete run
    return "complete" if (root / "summary.json").is_file() else "interrupted"


def describe_writer(status: dict[str, Any] | None) -> str:
    """``pid N on HOST`` of a status, for messages."""
    s = status or {}
    return f"pid {s.get('pid', '?')} on {s.get('host', '?')}"
