"""Run every file of a suite through the ordinary pipeline (``xkd.run``), one run folder per file
under the suite's folder, restartable: a file whose run finished (``summary.json``) is skipped, a
half-finished one continues with ``--resume`` (each student from its ``last.pt``), the rest start.

``dry_run=True`` first writes fake data in the real format of the suite's dataset and a teacher
checkpoint with fresh weights per file, then runs each file with ``--smoke`` (64 samples per
split, one epoch of two steps) and the suite's tiny-size overrides, with ``data.root`` pointed at
the fake data and downloads off: every stage of every file runs, nothing is downloaded, and the
user's own data folders are never written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from xkd import io
from xkd.config import load_with_overrides, parse
from xkd.reproduce import fake_data, results
from xkd.reproduce.suites import Suite, SuiteRun
from xkd.runfolder import LOCK

TEACHER_PREFIX = "save/models/"
"""Where the shipped files expect the community teachers (CRD/RepDistiller's fetch script layout);
``teachers_dir`` replaces this prefix."""


@dataclass
class Outcome:
    """What happened to one file: ``done`` (ran now), ``skipped`` (finished before), ``failed``."""

    file: str
    state: str
    seconds: float
    message: str = ""


def _teacher_override(path: Path, teachers_dir: str | None) -> list[str]:
    if teachers_dir is None:
        return []
    teacher = load_with_overrides(path).get("teacher") or {}
    ckpt = str((teacher.get("model") or {}).get("checkpoint") or "")
    if not ckpt.startswith(TEACHER_PREFIX):
        return []
    return [f"teacher.model.checkpoint={Path(teachers_dir) / ckpt[len(TEACHER_PREFIX):]}"]


def _launch_rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise); read from the environment because the
    process group starts only inside ``xkd.run``."""
    return int(os.environ.get("RANK", "0"))


def _written_by_rank0(path: Path, write: Callable[[], Any], timeout_s: float = 600.0) -> None:
    """Rank 0 writes ``path`` (atomically: it appears complete); the other ranks wait for it."""
    if _launch_rank() == 0:
        if not path.is_file():
            write()
        return
    t0 = time.monotonic()
    while not path.is_file():
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"rank {_launch_rank()}: {path} did not appear within {timeout_s:.0f} s")
        time.sleep(0.2)


def _dry_inputs(suite: Suite, run: SuiteRun, out: Path, overrides: list[str]) -> list[str]:
    """Write the fake data (once per suite) and this file's fake teacher; the --set values that
    point the file at them. Under torchrun rank 0 writes and the other ranks wait."""
    kind = suite.dry_run.data
    root = out / "_fake_data" / kind

    def write_data() -> None:
        if kind == "cifar100":
            fake_data.write_cifar100(root)
        else:
            fake_data.write_imagefolder(root)
        io.write_text(root / ".complete", "fake data written by xkd.reproduce --dry-run\n")

    _written_by_rank0(root / ".complete", write_data)
    sets = [*overrides, f"data.root={root}", "data.download=false", *suite.dry_run.overrides]
    cfg = parse(load_with_overrides(suite.path(run), sets))
    if cfg.teacher is not None:
        classes = fake_data.CIFAR100_CLASSES if kind == "cifar100" else len(list((root / "train").iterdir()))
        size = int(cfg.data.params.get("image_size") or 32)
        ckpt = out / "_fake_teachers" / f"{Path(run.file).stem}.pt"
        _written_by_rank0(ckpt, lambda: fake_data.write_teacher(ckpt, cfg.teacher.model, classes,
                                                                image_size=size, seed=cfg.seed))
        sets.append(f"teacher.model.checkpoint={ckpt}")
    return sets


def _prepare_folder(folder: Path) -> str | None:
    """``--resume`` when the folder holds a started run; None to start; raises for a foreign folder."""
    if (folder / "config.yaml").is_file():
        return "--resume"
    if folder.is_dir() and any(folder.iterdir()):
        leftovers = {p.name for p in folder.iterdir()}
        if leftovers <= {"status.json", LOCK}:  # stopped before its config was written: start again
            for name in leftovers:
                (folder / name).unlink(missing_ok=True)  # every rank under torchrun
            return None
        raise RuntimeError(f"{folder} holds files but is not a run folder (no config.yaml); move it away")
    return None


def run_suite(suite: Suite, out: Path, *, dry_run: bool = False, overrides: list[str] | None = None,
              teachers_dir: str | None = None, only: list[str] | None = None,
              log: Callable[[str], Any] = print) -> list[Outcome]:
    """Run (or continue) every file of ``suite`` into ``out``; the table is rewritten after each."""
    from xkd.engine import is_main_process
    from xkd.run import main as run_main

    if _launch_rank() != 0:
        log = (lambda _m: None)  # one voice under torchrun
    out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in suite.runs if not only or Path(r.file).stem in only]
    outcomes: list[Outcome] = []
    guard = fake_data.unverified_cifar100() if dry_run and suite.dry_run.data == "cifar100" else contextlib.nullcontext()
    with guard:
        for i, run in enumerate(runs, 1):
            folder = results.run_dir(out, run.file)
            t0 = time.perf_counter()
            if results.file_state(folder) == "complete":
                outcomes.append(Outcome(run.file, "skipped", 0.0, "finished before"))
                log(f"[reproduce] {i}/{len(runs)} {run.file}: finished before, skipped")
                continue
            log(f"[reproduce] {i}/{len(runs)} {run.file} ({run.pair})")
            try:
                sets = list(overrides or []) + _teacher_override(suite.path(run), teachers_dir)
                if dry_run:
                    sets = _dry_inputs(suite, run, out, sets)
                resume = _prepare_folder(folder)
                argv = [str(suite.path(run)), "--out", str(folder), *(["--resume"] if resume else []),
                        *(["--smoke"] if dry_run else []), *[a for s in sets for a in ("--set", s)]]
                rc = run_main(argv)
            except Exception as e:  # noqa: BLE001  (one file's crash must not stop the suite)
                rc, msg = 1, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            else:
                msg = "" if rc == 0 else f"xkd.run exited with code {rc} (its message is above)"
            seconds = time.perf_counter() - t0
            outcomes.append(Outcome(run.file, "done" if rc == 0 else "failed", seconds, msg))
            log(f"[reproduce] {run.file}: {'ok' if rc == 0 else 'FAILED ' + msg} ({seconds:.1f} s)")
            if is_main_process():
                results.write(suite, out, dry_run)
            if rc == 130:  # interrupted: stop the suite, restart continues here
                break
    if is_main_process():
        results.write(suite, out, dry_run)
    return outcomes


def remove_dry_run_folder(out: Path) -> None:
    """Delete a temporary dry-run folder (only ever one this module created)."""
    if (out / "_fake_data").is_dir():
        shutil.rmtree(out, ignore_errors=True)
