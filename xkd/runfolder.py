"""The run folder: the contract between ``xkd.run``, ``xkd.report`` and the viewer (DESIGN 5).

```
RUN/ config.yaml env.json teacher/ students/NAME/ saliency/ explanations/ metrics/ report/
     summary.json   (written last: a run folder without it is incomplete)
```
A multi-seed experiment writes one such folder per seed under ``RUN/seed-K/`` and an aggregate
``RUN/summary.json``.

Who writes a folder (the one-writer lock, ``status.json``'s writer and heartbeat, ``run_state``)
lives in :mod:`xkd.runlock`; its names are re-exported here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from xkd.errors import UserError
from xkd.runlock import (  # noqa: F401 (re-exported: the run folder's writer)
    LOCK, RunLock, beat, describe_writer, heartbeat, lock_run, read_status, run_state, write_status,
)

SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                  "/sbin", "/sys", "/usr", "/var/lib", "/var/log", "/var/spool")


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    def student(self, name: str) -> Path:
        return self.root / "students" / name

    @property
    def saliency(self) -> Path:
        return self.root / "saliency"

    @property
    def explanations(self) -> Path:
        return self.root / "explanations"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def is_complete(self) -> bool:
        return self.summary.is_file()

    def seed_runs(self) -> list["RunFolder"]:
        """Per-seed sub-runs of a multi-seed experiment (empty for a single run)."""
        subs = [p for p in self.root.glob("seed-*") if p.is_dir()]
        return [RunFolder(p) for p in sorted(subs, key=lambda p: int(p.name.split("-")[1]))]


def new_run_dir(output_root: str | Path, name: str) -> Path:
    """A fresh, unique folder name ``<root>/<name>-YYYYmmdd-HHMMSS[-k]`` (not created)."""
    root = Path(output_root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{name}-{stamp}"
    path, k = base, 1
    while path.exists():
        path = Path(f"{base}-{k}")
        k += 1
    return path


def latest_run_dir(output_root: str | Path, name: str) -> Path | None:
    """The most recent run folder of experiment ``name`` under ``output_root``, if any."""
    root = Path(output_root)
    if not root.is_dir():
        return None
    pat = re.compile(re.escape(name) + r"-\d{8}-\d{6}(-\d+)?$")
    cands = [p for p in root.iterdir() if p.is_dir() and pat.match(p.name)]
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def ensure_inside(root: str | Path, path: str | Path) -> Path:
    """Resolve ``path`` and refuse it unless it lies inside ``root`` (viewer and report safety)."""
    r = Path(root).resolve()
    p = Path(path).resolve()
    if p != r and r not in p.parents:
        raise UserError(f"{path} is outside the runs folder {root}; pick a run inside it")
    return p


def check_output_dir(path: str | Path, what: str) -> Path:
    """``path`` made absolute (``~`` and ``..`` resolved); a system folder is refused."""
    p = Path(path).expanduser().resolve()
    if p == Path(p.anchor) or any(p == Path(s) or Path(s) in p.parents for s in SYSTEM_FOLDERS):
        raise UserError(f"{what} {path} resolves to {p}, a system folder; write runs under your "
                        "project or home folder")
    return p
