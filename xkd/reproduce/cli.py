"""CLI: ``python -m xkd.reproduce --list`` | ``python -m xkd.reproduce SUITE [--dry-run] [--out DIR]
[--set KEY=VALUE ...] [--teachers DIR] [--only FILE_STEM ...]``.

``--list`` prints every run of every suite with the paper's top-1 next to it. ``SUITE`` (a shipped
suite such as ``cifar100`` or ``imagenet``, or a folder holding a ``suite.yaml``) runs its files
one after another into ``--out`` (default ``runs/reproduce-SUITE``), skipping finished ones and
resuming a half-finished one, and writes ``results.md``/``results.json`` (paper | xkd |
difference). ``--dry-run`` runs every file for a few steps on generated fake data in the real
on-disk format, to check an install before a long run (default folder: a temporary one, removed
when everything passed). Exit codes: 0 all files ran, 1 a file failed, 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from xkd.errors import UserError, run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xkd.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("suite", nargs="?", help="suite name (see --list) or a folder with a suite.yaml")
    p.add_argument("--list", action="store_true", help="print each suite's runs with the paper's numbers")
    p.add_argument("--dry-run", action="store_true",
                   help="every file for a few steps on fake data in the real format (no download)")
    p.add_argument("--out", help="suite run folder (default runs/reproduce-SUITE; dry run: a temporary folder)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field in every file, e.g. --set data.root=/data/cifar100")
    p.add_argument("--teachers", metavar="DIR",
                   help="folder of the community teacher checkpoints (replaces the files' save/models/)")
    p.add_argument("--only", action="append", default=[], metavar="FILE_STEM",
                   help="run only these files of the suite (e.g. --only resnet56_resnet20)")
    return p


def format_list(rows: list[dict[str, object]]) -> str:
    """The ``--list`` table: suite, pair, model, method, paper top-1 (``*`` = recalled), source."""
    head = ("suite", "pair", "model", "method", "paper top-1", "source")
    cells = [head] + [(str(r["suite"]), str(r["pair"]), str(r["model"]), str(r["method"]),
                       "-" if r["paper_top1"] is None else f"{r['paper_top1']:.2f}" + ("" if r["verified"] else "*"),
                       str(r["source"]) or "-") for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("* recalled in xkd's reference notes, not checked against the paper; "
                 "- no published number for the pair")
    return "\n".join(lines)


def _list(names: list[str]) -> int:
    from xkd.reproduce.suites import available, list_rows, load_suite

    suites = [load_suite(n) for n in (names or list(available()))]
    print(format_list(list_rows(suites)))
    return 0


def _run(args: argparse.Namespace) -> int:
    from xkd.reproduce import runner
    from xkd.reproduce.suites import load_suite

    suite = load_suite(args.suite)
    unknown = sorted(set(args.only) - {Path(r.file).stem for r in suite.runs})
    if unknown:
        raise UserError(f"--only: {', '.join(unknown)} is not a file of suite '{suite.name}'; its files: "
                        f"{', '.join(Path(r.file).stem for r in suite.runs)}")
    temporary = args.dry_run and not args.out
    if temporary and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--dry-run under torchrun needs --out DIR (a folder every rank shares)")
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix=f"xkd-dry-run-{suite.name}-"))
                                           if temporary else Path("runs") / f"reproduce-{suite.name}")
    outcomes = runner.run_suite(suite, out, dry_run=args.dry_run, overrides=args.overrides,
                                teachers_dir=args.teachers, only=args.only or None)
    failed = [o for o in outcomes if o.state == "failed"]
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports
        return 1 if failed else 0
    print(f"{'dry run' if args.dry_run else 'suite'} {suite.name}: {len(outcomes) - len(failed)} of "
          f"{len(outcomes)} files ran ({sum(o.seconds for o in outcomes):.0f} s)")
    for o in failed:
        print(f"  FAILED {o.file}: {o.message}", file=sys.stderr)
    if temporary and not failed:
        runner.remove_dry_run_folder(out)
    else:
        print(f"table: {out / 'results.md'}")
    if any(o.message.startswith("xkd.run exited with code 130") for o in failed):
        return 130
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        if args.list:
            return _list([args.suite] if args.suite else [])
        if not args.suite:
            raise UserError("name a suite (python -m xkd.reproduce --list shows them), e.g. "
                            "python -m xkd.reproduce cifar100 --dry-run")
        return _run(args)

    return run_cli(body, interrupted="run the same command again to continue",
                   after_fault="what was complete is kept: fix the cause, then run the same command again")
