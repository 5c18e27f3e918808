"""One ``xkd.run`` invocation: a single seed, or one sub-run per seed plus an aggregate summary.

``status.json`` says whether the folder is running, failed (with the one-line reason) or complete;
``summary.json`` is written last.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from xkd import io
from xkd.config import ExperimentConfig
from xkd.pipeline.checks import resolved_dict
from xkd.errors import UserError
from xkd.runfolder import RunFolder, describe_writer, heartbeat, lock_run, read_status, write_status


def _status(run_dir: Path, state: str, **extra: Any) -> None:
    from xkd.engine import is_main_process

    if is_main_process():
        if state == "failed":  # the failure's own line matters more than a status a full disk refuses
            with contextlib.suppress(UserError, OSError):
                write_status(run_dir, state, **extra)
        else:
            write_status(run_dir, state, **extra)


def run_session(cfg: ExperimentConfig, run_dir: Path, *, resume: bool, smoke: bool,
                argv: list[str], log: Any = print) -> dict[str, Any]:
    """Run the experiment into ``run_dir``; returns the (aggregate) summary on rank 0 (``{}`` on
    the other ranks of a ``torchrun`` launch, which write nothing). Rank 0 holds the folder's
    one-writer lock and keeps ``status.json``'s heartbeat fresh for the whole run."""
    from xkd.engine import is_main_process

    if not is_main_process():  # one voice: the progress lines come from rank 0
        return _session(cfg, run_dir, resume=resume, smoke=smoke, argv=argv, log=lambda *_a, **_k: None)
    with lock_run(run_dir):
        old = read_status(run_dir) or {}
        if old.get("state") == "running" and old.get("pid") is not None:
            log(f"[xkd] the run's last writer ({describe_writer(old)}) was interrupted; taking the "
                "run folder over")
        with heartbeat(run_dir):
            return _session(cfg, run_dir, resume=resume, smoke=smoke, argv=argv, log=log)


def _session(cfg: ExperimentConfig, run_dir: Path, *, resume: bool, smoke: bool,
             argv: list[str], log: Any = print) -> dict[str, Any]:
    from xkd.pipeline.flow import aggregate_seeds, run_one_seed

    if resume and RunFolder(run_dir).is_complete():  # summary.json is written last
        log(f"[xkd] {run_dir}: run is complete; nothing to do (python -m xkd.report {run_dir} "
            "rebuilds its report)")
        return io.read_json(RunFolder(run_dir).summary)
    _status(run_dir, "running")
    try:
        if not cfg.seeds:
            summary = run_one_seed(cfg, cfg.seed, run_dir, resume=resume, smoke=smoke, argv=argv, log=log)
        else:
            from xkd.engine import is_main_process

            if is_main_process():  # written first, so an interrupted multi-seed run can --resume
                io.write_yaml(run_dir / "config.yaml", resolved_dict(cfg))
            per_seed = []
            for seed in cfg.seeds:
                sub = run_dir / f"seed-{seed}"
                if resume and RunFolder(sub).is_complete():
                    per_seed.append(io.read_json(RunFolder(sub).summary))
                    continue
                log(f"[xkd] seed {seed}")
                per_seed.append(run_one_seed(cfg, seed, sub, resume=resume, smoke=smoke, argv=argv, log=log))
            summary = {}  # the other ranks hold no per-seed summaries: rank 0 alone aggregates
            if is_main_process():
                summary = {"name": cfg.name, "seeds": list(cfg.seeds), "smoke": smoke,
                           "rows": aggregate_seeds(per_seed), "per_seed": per_seed,
                           "task": per_seed[0].get("task"), "test_sets": per_seed[0].get("test_sets")}
                if cfg.report.enabled:
                    from xkd.report import build_seed_report

                    build_seed_report(run_dir, log=log)
                io.write_json(run_dir / "summary.json", summary)
            from xkd.engine.ranks import wait_for_main

            wait_for_main("the multi-seed summary and report")
    except UserError as e:
        _status(run_dir, "failed", error=str(e))
        raise
    except BaseException as e:
        _status(run_dir, "failed", error=f"{type(e).__name__}: {e}"[:500])
        raise
    _status(run_dir, "complete")
    return summary
