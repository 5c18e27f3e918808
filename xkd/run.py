"""CLI: ``python -m xkd.run EXPERIMENT.yaml [--set a.b=c ...] [--resume] [--out DIR] [--smoke]``.

Validates the whole experiment (config, names, models, distillers, explainers) before a run folder
is created; user mistakes print one line to stderr and exit with code 2. ``--list`` prints every
registered dataset, model, method, explainer and metric.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xkd.errors import UserError, run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xkd.run", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", nargs="?", help="experiment YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.epochs=2 --set students[0].params.T=2")
    p.add_argument("--out", help="run folder (default: <output.root>/<name>-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (or the latest run of this experiment)")
    p.add_argument("--smoke", action="store_true",
                   help="every stage on a few batches for one epoch: checks a file before a long run")
    p.add_argument("--list", action="store_true", help="list registered names and exit")
    p.add_argument("--check", action="store_true", help="validate the experiment and exit")
    return p


def list_registered() -> dict[str, list[str]]:
    """Every registered name per family (timm-style discovery)."""
    from xkd.data import list_datasets
    from xkd.distill import list_methods
    from xkd.explain import list_explainers
    from xkd.models import list_models

    out = {"datasets": list_datasets(), "models": list_models(), "methods": list_methods(),
           "explainers": list_explainers()}
    try:
        from xkd.metrics import list_metrics
        out["metrics"] = [f"{m['name']} ({m['category']}, {'higher' if m['higher_is_better'] else 'lower'} is better)"
                          for m in list_metrics()]
    except ImportError:
        pass
    return out


def _choose_dir(cfg: Any, args: argparse.Namespace) -> Path:
    from xkd.runfolder import check_output_dir, latest_run_dir, new_run_dir

    if args.out:
        out = check_output_dir(args.out, "--out")
        if args.resume:
            if not (out / "config.yaml").is_file():
                raise UserError(f"--resume: {out} is not a run folder (no config.yaml); drop --resume to start one")
            return out
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--out {out} already holds files; use --resume to continue it or pick a new folder")
        return out
    root = check_output_dir(cfg.output.root, "output.root")
    if args.resume:
        last = latest_run_dir(root, cfg.name)
        if last is None:
            raise UserError(f"--resume: no earlier run of '{cfg.name}' under {cfg.output.root}; pass --out RUN_DIR")
        return last
    return new_run_dir(root, cfg.name)


def _check_resume_config(run_dir: Path, cfg: Any) -> None:
    from xkd.pipeline.checks import resolved_dict
    from xkd.io import read_yaml

    stored = dict(read_yaml(run_dir / "config.yaml"))
    stored.pop("format_version", None)
    stored.pop("seed", None)
    now = resolved_dict(cfg)
    for key in now:
        if key in ("seed", "seeds", "output"):
            continue
        if stored.get(key) != now[key]:
            raise UserError(f"--resume: section '{key}' differs from {run_dir}/config.yaml; "
                            "resume with the same experiment file and --set values")


def _on_rank0(fn: Any) -> Any:
    """``fn()`` run by rank 0 alone; its result (or its UserError line) on every rank. Under DDP the
    run folder is chosen and checked once: another rank checking ``--out`` for files after rank 0
    has started writing there would refuse the run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except UserError as e:
            box = [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise UserError(value)
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)

    def body() -> int:
        if args.list:
            for family, names in list_registered().items():
                print(f"{family}: {', '.join(names)}")
            return 0
        if not args.experiment:
            raise UserError("missing EXPERIMENT.yaml; e.g. python -m xkd.run experiments/quickstart.yaml")
        return _run(args, argv)

    return run_cli(body, interrupted="continue with --resume",
                   after_fault="what was complete is kept: fix the cause, then continue with --resume")


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from xkd.config.loading import check_file

    check_file(args.experiment)  # before torch and the registries are imported
    from xkd.pipeline import checks as C
    from xkd.engine import init_distributed, is_main_process
    from xkd.pipeline.preflight import preflight

    cfg = C.load(args.experiment, args.overrides)
    preflight(cfg, smoke=args.smoke)
    if args.check:
        print(f"{args.experiment}: ok")
        return 0
    init_distributed(timeout_s=round(cfg.distributed.timeout_minutes * 60))

    def choose() -> Path:  # the folder is resolved and shown in full before anything is written
        from xkd.runfolder import lock_run, run_state

        run_dir = _choose_dir(cfg, args)
        if args.resume:
            _check_resume_config(run_dir, cfg)
            print(f"[xkd] run folder: {run_dir} (resuming a run that is {run_state(run_dir)})", flush=True)
        else:
            print(f"[xkd] run folder: {run_dir}", flush=True)
        held.append(lock_run(run_dir))  # one writer: refused here, on rank 0, before any rank starts
        return run_dir

    held: list[Any] = []
    run_dir = _on_rank0(choose)
    from xkd.pipeline.session import run_session

    try:
        summary = run_session(cfg, run_dir, resume=args.resume, smoke=args.smoke,
                              argv=["python", "-m", "xkd.run", *argv])
    finally:
        for lock in held:
            lock.release()
    if is_main_process():
        from xkd.pipeline.summary_table import format_summary

        print(format_summary(summary))
        print(f"run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
