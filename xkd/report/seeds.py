"""``build_seed_report(RUN)``: the summary of a multi-seed run (``RUN/seed-K/`` sub-runs).

Reads each seed's ``summary.json`` (required), its ``metrics/aggregates.json`` (optional: the
teacher's map quality on the masks, relevance mass accuracy and pointing game per explainer) and
each student's ``metrics.json`` (optional ``weight_map_*`` fields). Writes ``RUN/report/report.md``,
a self-contained ``report.html`` and ``seeds.json`` with

- a per-seed table: every model's score (accuracy, or MAE for regression) and agreement on every
  test set, and the teacher's map quality;
- mean ± sample std over seeds;
- for every student, the paired difference to the baseline student (``report.baseline``, default
  the student named ``reviewkd``) per test set: ``mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n)`` over
  seeds (:func:`xkd.report.stats.paired_difference`, scipy.stats.t).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from xkd import io
from xkd.errors import UserError
from xkd.report.builder import Log, _swap
from xkd.report.document import Document, Table
from xkd.report.loading import read_config
from xkd.report.stats import mean_std, paired_difference
from xkd.report.tables import fmt
from xkd.runfolder import RunFolder

MAP_QUALITY = ("relevance_mass_accuracy", "pointing_game")


def _seed_dirs(root: Path, seeds: list[int] | None) -> list[tuple[int, Path]]:
    if seeds:
        return [(s, root / f"seed-{s}") for s in seeds]
    found = RunFolder(root).seed_runs()
    if not found:
        raise UserError(f"{root} has no seed-K sub-runs; use build_report for a single run")
    return [(int(f.root.name.split("-")[1]), f.root) for f in found]


def _columns(summary: dict[str, Any]) -> list[str]:
    score = "acc" if summary.get("task", "classification") == "classification" else "mae"
    cols = []
    for ts in summary.get("test_sets") or ["test"]:
        cols.append(f"{ts}_{score}")
        if score == "acc":
            cols.append(f"{ts}_agreement")
        cols += [f"{ts}_{k}" for k in ("r1", "r5")  # retrieval (multi-modal runs, issue 7)
                 if any(isinstance(r.get(f"{ts}_{k}"), float) for r in summary.get("rows", []))]
    return cols


def collect(root: Path, seeds: list[int] | None) -> dict[str, Any]:
    """Per seed and model, every numeric column the seed report shows."""
    per_seed: dict[int, dict[str, dict[str, Any]]] = {}
    cols: list[str] = []
    task, test_sets = "classification", ["test"]
    for seed, d in _seed_dirs(root, seeds):
        summary = io.read_json(d / "summary.json")
        task = summary.get("task") or task
        test_sets = summary.get("test_sets") or test_sets
        for c in _columns(summary):
            if c not in cols:
                cols.append(c)
        models: dict[str, dict[str, Any]] = {}
        for row in summary.get("rows", []):
            name = row.get("model")
            vals = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            mj = d / "students" / str(name) / "metrics.json"
            if row.get("role") == "student" and mj.is_file():
                vals.update({k: v for k, v in io.read_json(mj).items()
                             if k.startswith("weight_map_") and isinstance(v, (int, float))})
            models[str(name)] = {"role": row.get("role"), **vals}
        agg_path = d / "metrics" / "aggregates.json"
        if agg_path.is_file() and "teacher" in models:
            for r in io.read_json(agg_path).get("results", []):
                if r.get("model") == "teacher" and r.get("metric") in MAP_QUALITY:
                    models["teacher"][f"teacher_map_{r['metric']}_{r.get('explainer')}"] = r.get("mean")
        per_seed[seed] = models
    extra = sorted({k for ms in per_seed.values() for m in ms.values() for k in m
                    if k.startswith(("weight_map_", "teacher_map_"))})
    return {"per_seed": per_seed, "columns": cols + extra, "task": task, "test_sets": test_sets}


def _baseline(cfg: Any, students: list[str]) -> str | None:
    if cfg.report.baseline:
        if cfg.report.baseline not in students:
            raise UserError(f"report.baseline: '{cfg.report.baseline}' is not a student of this run; "
                            f"allowed: {', '.join(students)}")
        return cfg.report.baseline
    return "reviewkd" if "reviewkd" in students else None


def summarise(col: dict[str, Any], baseline: str | None) -> dict[str, Any]:
    per_seed, cols = col["per_seed"], col["columns"]
    seeds = sorted(per_seed)
    models: list[str] = []
    for s in seeds:
        models += [m for m in per_seed[s] if m not in models]
    mean = {m: {c: dict(zip(("mean", "std"), mean_std([per_seed[s].get(m, {}).get(c) for s in seeds])))
                for c in cols} for m in models}
    score = "acc" if col["task"] == "classification" else "mae"
    diffs: dict[str, dict[str, Any]] = {}
    if baseline is not None:
        for m in models:
            if m in (baseline, "teacher") or per_seed[seeds[0]].get(m, {}).get("role") == "teacher":
                continue
            diffs[m] = {}
            for ts in col["test_sets"]:
                for c in (f"{ts}_{score}", f"{ts}_agreement"):
                    if c not in cols:
                        continue
                    a = [per_seed[s].get(m, {}).get(c) for s in seeds]
                    b = [per_seed[s].get(baseline, {}).get(c) for s in seeds]
                    diffs[m][c] = paired_difference(a, b)
    return {"seeds": seeds, "models": models, "mean_std": mean, "paired": diffs, "baseline": baseline}


def _compose(name: str, col: dict[str, Any], summ: dict[str, Any]) -> Document:
    doc = Document(f"xkd multi-seed report: {name}")
    cols, per_seed = col["columns"], col["per_seed"]
    doc.p(f"{len(summ['seeds'])} seeds ({', '.join(map(str, summ['seeds']))}); each seed's own report "
          "is in `seed-K/report/`. `teacher_map_*`: the teacher's map quality on the masks (seed's "
          "metrics/aggregates.json); `weight_map_*`: from each student's metrics.json.")
    doc.h("Per seed")
    rows = [[str(s), m] + [fmt(per_seed[s].get(m, {}).get(c)) for c in cols]
            for s in summ["seeds"] for m in summ["models"]]
    doc.table(Table(["seed", "model"] + cols, rows))
    doc.h("Mean ± std over seeds")
    rows = [[m] + [f"{fmt(summ['mean_std'][m][c]['mean'])} ± {fmt(summ['mean_std'][m][c]['std'])}"
                   if fmt(summ["mean_std"][m][c]["mean"]) != "-" else "-" for c in cols]
            for m in summ["models"]]
    doc.table(Table(["model"] + cols, rows, caption="sample standard deviation (ddof 1)"))
    doc.h("Paired difference to the baseline")
    if summ["baseline"] is None:
        doc.p("No baseline: set `report.baseline` to a student name (default: a student named "
              "`reviewkd`).")
    else:
        rows = []
        for m, per in summ["paired"].items():
            for c, d in per.items():
                rows.append([m, c, fmt(d["mean"], 4), f"[{fmt(d['ci_low'], 4)}, {fmt(d['ci_high'], 4)}]",
                             fmt(d["sd"], 4), str(d["n"])])
        doc.table(Table(["student", "column", f"mean diff vs {summ['baseline']}", "95% t-interval",
                         "sd", "seeds"], rows,
                        caption="d_s = student - baseline per seed; mean(d) ± t(0.975, n-1)·sd/√n"))
    return doc


def build_seed_report(run_dir: str | Path, log: Log = print) -> Path:
    """Write the multi-seed report into ``RUN/report``; returns the path of ``report.html``."""
    root = Path(run_dir)
    cfg, _ = read_config(root / "config.yaml")
    col = collect(root, cfg.seeds)
    students = [s.name for s in cfg.students]
    summ = summarise(col, _baseline(cfg, students))
    doc = _compose(cfg.name, col, summ)
    tmp = Path(tempfile.mkdtemp(prefix=".report-build-", dir=root))
    try:
        rep = tmp / "report"
        io.write_json(rep / "seeds.json", {"created": time.time(), "task": col["task"],
                                           "columns": col["columns"], **summ,
                                           "per_seed": {str(k): v for k, v in col["per_seed"].items()}})
        io.write_text(rep / "report.md", doc.markdown())
        io.write_text(rep / "report.html", doc.html())
        _swap(root, tmp, ("report",))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    log(f"[xkd.report] multi-seed report written to {root / 'report'}")
    return root / "report" / "report.html"
