"""The ``paper | xkd | difference`` table of a suite run: one row per model of every file (teacher
and students), the paper's top-1 (%), xkd's test top-1 (%) from the file's ``summary.json`` (mean
over seeds when the file runs several), and xkd minus paper. Written as ``results.md`` and
``results.json`` in the suite's run folder after every file, so a half-finished suite shows what
it has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xkd import io
from xkd.reproduce.suites import Suite, models_of
from xkd.runfolder import RunFolder, run_state


def run_dir(out: Path, file: str) -> Path:
    """The run folder of one experiment file of a suite: ``OUT/<file stem>``."""
    return out / Path(file).stem


def _top1(row: dict[str, Any]) -> float | None:
    for key in ("test_acc", "test_acc_mean"):
        if isinstance(row.get(key), (int, float)):
            return 100.0 * float(row[key])
    return None


def file_state(folder: Path) -> str:
    """``complete`` (summary.json, written last), ``not run``, or the unfinished run's state from
    :func:`xkd.runfolder.run_state` (``running``, ``interrupted``, ``failed``)."""
    if RunFolder(folder).is_complete():
        return "complete"
    if not (folder / "status.json").is_file():
        return "not run"
    state = run_state(folder)
    return "interrupted" if state in ("complete", "unknown") else state  # no summary: not finished


def collect(suite: Suite, out: Path) -> list[dict[str, Any]]:
    """Rows of the table for every run of ``suite`` under ``out`` (finished or not)."""
    rows: list[dict[str, Any]] = []
    for run in suite.runs:
        folder = run_dir(out, run.file)
        state = file_state(folder)
        measured: dict[str, float | None] = {}
        if state == "complete":
            summary = io.read_json(RunFolder(folder).summary)
            measured = {str(r["model"]): _top1(r) for r in summary.get("rows", [])}
        for model in models_of(suite.path(run)):
            p = run.paper.get(model)
            paper = None if p is None else p.top1
            xkd = measured.get(model)
            rows.append({"pair": run.pair, "file": run.file, "model": model, "state": state,
                         "paper": paper, "paper_verified": True if p is None else p.verified,
                         "source": "" if p is None else p.source, "xkd": xkd,
                         "difference": None if paper is None or xkd is None else xkd - paper})
    return rows


def _fmt(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def markdown(suite: Suite, rows: list[dict[str, Any]], dry_run: bool) -> str:
    """The table as Markdown (``*`` marks a paper number xkd's notes carry as recalled)."""
    head = [f"# {suite.title}: paper | xkd | difference", ""]
    if dry_run:
        head += ["**Dry run on fake data: the xkd column only shows that every stage ran; it is "
                 "not a result.**", ""]
    head += ["Top-1 (%) on the test set; difference = xkd - paper. `-`: no published number, or "
             "not run yet. `*`: recalled in xkd's reference notes, not checked against the paper.", "",
             "| pair | model | paper | xkd | difference | state |", "|---|---|---|---|---|---|"]
    body = [f"| {r['pair']} | {r['model']} | {_fmt(r['paper'])}{'' if r['paper_verified'] else '*'} | "
            f"{_fmt(r['xkd'])} | {_fmt(r['difference'], sign=True)} | {r['state']} |" for r in rows]
    return "\n".join(head + body) + "\n"


def write(suite: Suite, out: Path, dry_run: bool) -> list[dict[str, Any]]:
    """Collect and write ``OUT/results.md`` and ``OUT/results.json``; returns the rows."""
    rows = collect(suite, out)
    io.write_text(out / "results.md", markdown(suite, rows, dry_run))
    io.write_json(out / "results.json", {"suite": suite.name, "dry_run": dry_run, "rows": rows})
    return rows
