"""Write per-sample metric values (CSV) and their aggregates (``aggregates.json``).

``metrics/<metric>__<model>__<explainer>.csv`` (``<metric>__<model>.csv`` for rows that do not
depend on an explainer: prediction metrics and the faithfulness/localisation control rows), one
line per eval sample: ``position`` (row in the eval subset), ``index`` (dataset index in the test
split), ``value`` (NaN written as ``nan``), then per-sample flags (e.g. ``empty_mask``) and curve
points ``curve@<x>``. Floats are written with 17 significant digits (exact round trip).

``metrics/aggregates.json`` (versioned): per row the mean over non-NaN samples, 95 % bootstrap CI,
N, NaN count, direction, category, seconds, the file name and, where the metric has curves, the
mean curve (``curve_x``, ``curve_mean``); ``by_metric`` repeats the means keyed
metric -> model -> explainer (``-`` for none); plus skipped metrics with reasons, the cost per
metric, the metric parameters and the conventions.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xkd import io
from xkd.metrics import METRICS
from xkd.report.compute import Computed, Row
from xkd.report.stats import BOOTSTRAP_SEED, bootstrap_summary


def csv_name(row: Row) -> str:
    parts = [row.metric, row.model] + ([row.explainer] if row.explainer else [])
    return "__".join(parts) + ".csv"


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return repr(float(v)) if isinstance(v, float) else str(v)


def row_table(row: Row, indices: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """Header and lines of a row's per-sample CSV."""
    res = row.result
    vals = res.values.double().cpu().numpy()
    n = vals.shape[0]
    cols: list[tuple[str, np.ndarray]] = [("position", np.arange(n)), ("index", indices[:n]),
                                          ("value", vals)]
    for k, v in res.extras.items():
        if isinstance(v, torch.Tensor) and tuple(v.shape) == (n,):
            cols.append((k, v.cpu().numpy()))
    if res.curves is not None and res.curve_x is not None and res.curves.shape[0] == n:
        xs = res.curve_x.double().cpu().numpy()
        cur = res.curves.double().cpu().numpy()
        for j, x in enumerate(xs):
            cols.append((f"curve@{x:.6g}", cur[:, j]))
    header = [c for c, _ in cols]
    lines = []
    for i in range(n):
        cells = []
        for _, arr in cols:
            v = arr[i]
            if isinstance(v, (np.bool_, bool)):
                cells.append(str(int(v)))
            elif isinstance(v, (np.integer, int)):
                cells.append(str(int(v)))
            else:
                cells.append(_fmt(float(v)))
        lines.append(cells)
    return header, lines


def write_csv(path: Path, header: list[str], lines: list[list[str]]) -> None:
    text = ",".join(header) + "\n" + "".join(",".join(cells) + "\n" for cells in lines)
    io.write_text(path, text)


def _mean_curve(res: Any) -> tuple[list[float], list[float], list[float]] | None:
    if res.curves is None or res.curve_x is None:
        return None
    c = res.curves.double().cpu().numpy()
    with np.errstate(all="ignore"):
        mean = np.nanmean(c, axis=0)
        sd = np.nanstd(c, axis=0)
    return res.curve_x.double().cpu().tolist(), mean.tolist(), sd.tolist()


def aggregate(row: Row, n_boot: int) -> dict[str, Any]:
    """The aggregate record of one row."""
    meta = METRICS.entry(row.metric).meta
    stats = bootstrap_summary(row.result.values.double().cpu().numpy(), n_boot, BOOTSTRAP_SEED)
    rec: dict[str, Any] = {
        "metric": row.metric, "model": row.model, "explainer": row.explainer or "", "role": row.role,
        "category": meta["category"], "higher_is_better": bool(meta["higher_is_better"]),
        **stats, "seconds": round(row.seconds, 4), "file": csv_name(row),
        "class_rule": row.class_rule,
    }
    curve = _mean_curve(row.result)
    if curve is not None:
        rec["curve_x"], rec["curve_mean"], rec["curve_std"] = curve
    extra_curves = {k: np.nanmean(v.double().cpu().numpy(), axis=0).tolist()
                    for k, v in row.result.extras.items()
                    if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[0] == rec["n"] + rec["n_nan"]}
    if extra_curves:
        rec["extra_curves_mean"] = extra_curves
    info = {k: v for k, v in row.result.info.items() if isinstance(v, (int, float, str, bool, list, tuple))}
    if info:
        rec["info"] = info
    return rec


def write_records(out_dir: Path, comp: Computed, indices: np.ndarray, n_boot: int,
                  header: dict[str, Any]) -> dict[str, Any]:
    """Write every CSV and ``aggregates.json`` into ``out_dir``; returns the aggregates dict."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for row in comp.rows:
        head, lines = row_table(row, indices)
        write_csv(out_dir / csv_name(row), head, lines)
        results.append(aggregate(row, n_boot))
    metas = {}
    for name in sorted({r.metric for r in comp.rows} | {s["metric"] for s in comp.skipped}):
        e = METRICS.entry(name)
        metas[name] = {"category": e.meta["category"], "higher_is_better": e.meta["higher_is_better"],
                       "description": e.description}
    nested: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:  # the same numbers keyed metric -> model -> explainer ("-": none), no curves
        nested.setdefault(r["metric"], {}).setdefault(r["model"], {})[r["explainer"] or "-"] = {
            k: r[k] for k in ("metric", "model", "explainer", "mean", "ci_low", "ci_high", "n", "n_nan")}
    agg = {**header, "bootstrap": {"resamples": n_boot, "seed": BOOTSTRAP_SEED, "level": 0.95,
                                   "method": "percentile bootstrap of the mean over non-NaN samples"},
           "params": comp.params, "metrics": metas, "results": results, "by_metric": nested,
           "skipped": comp.skipped,
           "cost_seconds": {k: round(v, 4) for k, v in comp.seconds.items()},
           "forwards": comp.forwards}
    io.write_json(out_dir / "aggregates.json", agg)
    return agg
