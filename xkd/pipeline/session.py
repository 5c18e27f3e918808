"""One ``xkd.run`` invocation: a single seed, or one sub-run per seed plus an aggregate summary.

``status.json`` says whether the folder is running, failed (with the one-line reason) or complete;
``summary.json`` is written last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from xkd import io
from xkd.config import ExperimentConfig
from xkd.pipeline.checks import resolved_dict
from xkd.errors import UserError
from xkd.runfolder import RunFolder


def _status(run_dir: Path, state: str, **extra: Any) -> None:
    from xkd.engine import is_main_process

    if is_main_process():
        io.write_json(run_dir / "status.json", {"state": state, "time": time.time(), **extra})


def run_session(cfg: ExperimentConfig, run_dir: Path, *, resume: bool, smoke: bool,
                argv: list[str], log: Any = print) -> dict[str, Any]:
    """Run the experiment into ``run_dir``; returns the (aggregate) summary."""
    from xkd.pipeline.flow import aggregate_seeds, run_one_seed

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
            summary = {"name": cfg.name, "seeds": list(cfg.seeds), "smoke": smoke,
                       "rows": aggregate_seeds(per_seed), "per_seed": per_seed,
                       "task": per_seed[0].get("task"), "test_sets": per_seed[0].get("test_sets")}
            if is_main_process():
                if cfg.report.enabled:
                    from xkd.report import build_seed_report

                    build_seed_report(run_dir, log=log)
                io.write_json(run_dir / "summary.json", summary)
    except UserError as e:
        _status(run_dir, "failed", error=str(e))
        raise
    except BaseException as e:
        _status(run_dir, "failed", error=f"{type(e).__name__}: {e}"[:500])
        raise
    _status(run_dir, "complete")
    return summary
