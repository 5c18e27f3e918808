"""CLI: ``python -m xkd.report RUN [--metrics a,b] [--subset N] [--perturbation-samples N]
[--no-figures] [--device D]``.

Recomputes the metrics of a finished run from its saved checkpoints and explanations (no
retraining) and rewrites ``RUN/metrics`` and ``RUN/report``. A folder holding ``seed-K/`` sub-runs
gets each seed's report and the multi-seed summary. Errors print one line to stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from xkd.errors import UserError, run_cli


def _parser() -> argparse.ArgumentParser:
    from xkd.report.compute import PERTURBATION_SAMPLES

    p = argparse.ArgumentParser(prog="python -m xkd.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder (RUN/, as written by python -m xkd.run)")
    p.add_argument("--metrics", help="comma-separated metric names (default: evaluate.metrics or all)")
    p.add_argument("--subset", type=int, help="use the first N samples of the eval subset")
    p.add_argument("--perturbation-samples", type=int, default=PERTURBATION_SAMPLES,
                   help="samples for the metrics that run a model on perturbed inputs "
                        f"(default {PERTURBATION_SAMPLES}; 0 = every eval sample)")
    p.add_argument("--device", default="cpu", help="torch device for the metrics (default cpu)")
    p.add_argument("--no-figures", action="store_true", help="tables only (faster)")
    p.add_argument("--quiet", action="store_true", help="only print the report path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    log = (lambda *_: None) if args.quiet else print

    def body() -> int:
        metrics = None
        if args.metrics is not None:
            metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
            if not metrics:
                raise UserError("--metrics: give at least one metric name, e.g. --metrics deletion,cosine")
        if args.subset is not None and args.subset < 1:
            raise UserError(f"--subset must be >= 1 (got {args.subset})")
        if args.perturbation_samples < 0:
            raise UserError(f"--perturbation-samples must be >= 0 (got {args.perturbation_samples})")
        run = Path(args.run)
        figures = False if args.no_figures else None
        from xkd.report import build_report, build_seed_report
        from xkd.runfolder import RunFolder, lock_run

        seeds = RunFolder(run).seed_runs() if run.is_dir() else []
        # one writer per run folder: not while xkd.run (or another report) writes it
        with lock_run(run) if run.is_dir() else contextlib.nullcontext():
            if seeds and not (run / "explanations").is_dir():
                for sub in seeds:
                    build_report(sub.root, metrics, args.subset, log=log, figures=figures,
                                 perturbation_samples=args.perturbation_samples, device=args.device)
                out = build_seed_report(run, log=log)
            else:
                out = build_report(run, metrics, args.subset, log=log, figures=figures,
                                   perturbation_samples=args.perturbation_samples, device=args.device)
        print(out)
        return 0

    return run_cli(body, interrupted="the previous report is unchanged",
                   after_fault="the previous report is unchanged")
