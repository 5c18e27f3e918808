"""Finding run folders under the runs root and reading their small JSON/YAML files (DESIGN 5).

Everything here tolerates missing or partial artifacts: a reader returns ``None`` (or an empty
list) and :func:`load_run` lists what is missing in plain words, so the pages can show what a run
has and say what it lacks (a run still training, a failed run, a multi-seed parent folder).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import streamlit as st
import yaml

MARKERS = ("config.yaml", "status.json", "summary.json", "explanations")
"""A folder holding any of these is a run folder."""


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when absent, half-written or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        obj = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (a run still writing) is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def is_run(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in MARKERS)


def discover_runs(root: str | os.PathLike, depth: int = 3) -> list[str]:
    """Run folders under ``root`` (paths relative to it, ``.`` for the root itself), newest first;
    the ``seed-K`` sub-runs of a multi-seed run are listed after their parent."""
    base = Path(root)
    if not base.is_dir():
        return []
    found: list[Path] = []

    def walk(p: Path, d: int) -> None:
        if is_run(p):
            found.append(p)
        if d == 0:
            return
        try:
            subs = sorted(c for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))
        except OSError:
            return
        for c in subs:
            if c.name not in ("explanations", "students", "teacher", "saliency", "metrics", "report"):
                walk(c, d - 1)

    walk(base, depth)

    def key(p: Path) -> tuple[float, str]:
        top = p if p.parent == base or p == base else next(a for a in p.parents if a.parent == base)
        try:
            t = top.stat().st_mtime
        except OSError:
            t = 0.0
        return (-t, str(p.relative_to(base)))

    return [str(p.relative_to(base)) for p in sorted(found, key=key)]


def stamp(run: str | os.PathLike) -> float:
    """A cache key that changes when the run writes something the viewer reads."""
    p = Path(run)
    names = ["status.json", "summary.json", "explanations/index.json", "metrics", "students", "teacher"]
    t = 0.0
    for n in names:
        try:
            t = max(t, (p / n).stat().st_mtime)
        except OSError:
            pass
    for h in list(p.glob("students/*/history.jsonl")) + [p / "teacher" / "history.jsonl"]:
        try:
            t = max(t, h.stat().st_mtime)
        except OSError:
            pass
    return t


def _student_params(config: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in (config or {}).get("students") or []:
        if isinstance(s, dict) and "name" in s:
            out[str(s["name"])] = {"method": s.get("method"), **(s.get("params") or {})}
    return out


def load_run(path: str, version: float) -> dict[str, Any]:
    """Everything small about one run: status, summary, config, per-model metrics and history,
    the explanations index, the seed sub-runs, and a list of what is missing. ``state`` is
    checked live (not cached): a run whose writer died says ``interrupted``, not ``running``."""
    from xkd.runfolder import run_state

    run = _load_run(path, version)
    if run["status"]:
        run["state"] = run_state(path, run["status"])
    return run


@st.cache_data(show_spinner=False, max_entries=64)
def _load_run(path: str, version: float) -> dict[str, Any]:
    p = Path(path)
    status = read_json(p / "status.json")
    summary = read_json(p / "summary.json")
    config = read_yaml(p / "config.yaml")
    index = read_json(p / "explanations" / "index.json")
    seeds = sorted((c.name for c in p.glob("seed-*") if c.is_dir()),
                   key=lambda n: int(n.split("-")[1]) if n.split("-")[1].isdigit() else 0)
    models: dict[str, dict[str, Any]] = {}
    if (p / "teacher").is_dir():
        models["teacher"] = {"role": "teacher"}
    for d in sorted((p / "students").glob("*")) if (p / "students").is_dir() else []:
        if d.is_dir():
            models[d.name] = {"role": "student"}
    for name in (index or {}).get("models", {}):
        models.setdefault(name, {"role": index["models"][name].get("role", "student")})
    for row in (summary or {}).get("rows", []):
        models.setdefault(str(row.get("model")), {"role": row.get("role", "student")})
    params = _student_params(config)
    for name, m in models.items():
        folder = p / "teacher" if name == "teacher" else p / "students" / name
        m["metrics"] = read_json(folder / "metrics.json")
        m["history"] = read_jsonl(folder / "history.jsonl")
        m["params"] = params.get(name, {})
    state = (status or {}).get("state") or ("complete" if summary else "unknown")
    missing: list[str] = []
    if not seeds:
        if summary is None:
            missing.append("summary.json (the run is still going, was stopped, or failed)")
        if index is None:
            missing.append("explanations/ (the sample explorer and stage view need it)")
        if not (p / "metrics").is_dir():
            missing.append("metrics/ (per-sample metrics; run `python -m xkd.report RUN`; "
                           "the viewer computes cosine/Spearman alignment itself meanwhile)")
    for name, m in models.items():
        if name in ((index or {}).get("models") or {}):
            continue
        if index is not None:
            missing.append(f"explanations for '{name}' (not in explanations/index.json)")
    return {"path": str(p), "name": p.name, "status": status or {}, "state": state,
            "summary": summary, "config": config, "index": index, "seeds": seeds,
            "models": models, "missing": missing,
            "task": (summary or {}).get("task") or (index or {}).get("task") or _task(p)}


def _task(p: Path) -> str:
    """The task of a run without summary.json yet: regression when a model's metrics.json
    (written as each model finishes) has a ``*_mae`` column."""
    for f in [p / "teacher" / "metrics.json", *sorted(p.glob("students/*/metrics.json"))]:
        m = read_json(f) or {}
        if any(str(k).endswith("_mae") for k in m):
            return "regression"
    return "classification"


def no_explanations(run: dict[str, Any]) -> str:
    """Why a run has no ``explanations/``, in one sentence."""
    if run["seeds"]:
        return f"this is a multi-seed run; open one of its seeds ({', '.join(run['seeds'])}) in the sidebar"
    if run["state"] == "running":
        return "the run is still training; explanations/ is written when training ends"
    if run["state"] == "failed":
        return "the run failed before exporting explanations"
    if run["state"] == "interrupted":
        return "the run was interrupted before exporting explanations; continue it with --resume"
    if (Path(run["path"]) / "explanations" / "video_index.json").is_file():
        return ("this multi-modal run exports per-frame video explanations instead (frame strips in "
                "the Sample explorer)")
    return "this run folder has no explanations/ (stopped before the export?)"


def students(run: dict[str, Any]) -> list[str]:
    return [n for n, m in run["models"].items() if m.get("role") != "teacher"]


def history_frame(run: dict[str, Any]):
    """Long table (model, epoch, series, value) of every numeric field of every history.jsonl."""
    import pandas as pd

    rows = []
    for name, m in run["models"].items():
        for h in m.get("history") or []:
            ep = h.get("epoch")
            flat = {k: v for k, v in h.items() if k not in ("format_version", "epoch", "step")}
            for group, prefix in (("losses", "loss"), ("logs", "log")):
                for k, v in (flat.pop(group, None) or {}).items():
                    flat[f"{prefix}.{k}"] = v
            for k, v in flat.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and ep is not None:
                    rows.append({"model": name, "epoch": ep, "series": k, "value": float(v)})
    return pd.DataFrame(rows, columns=["model", "epoch", "series", "value"])
