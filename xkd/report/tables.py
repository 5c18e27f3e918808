"""Report tables built from the aggregates (mean, 95 % bootstrap CI, N) and the models' metrics.json.

Metric tables have one row per (model, explainer) and one column per metric; a column header
carries the direction (↑ higher is better, ↓ lower is better); each cell is coloured by its rank
in the column in that direction (green best, red worst) and the best is bold. Rows are sorted by
the mean of those per-column scores, best first; the control rows come last.
"""

from __future__ import annotations

import math
from typing import Any

from xkd.report.document import Cell, Table


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.5 * 10.0 ** -digits:  # would print as 0.000: keep the magnitude
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def metric_table(results: list[dict[str, Any]], metrics: list[str], caption: str = "",
                 by_explainer: bool = True) -> Table | None:
    """Wide table of ``results`` (aggregate records) for ``metrics``."""
    recs = [r for r in results if r["metric"] in metrics]
    if not recs:
        return None
    cols = [m for m in metrics if any(r["metric"] == m for r in recs)]
    direction = {r["metric"]: r["higher_is_better"] for r in recs}
    keys: list[tuple[str, str]] = []
    for r in recs:
        k = (r["model"], r["explainer"] if by_explainer else "")
        if k not in keys:
            keys.append(k)
    cell: dict[tuple[str, str, str], dict[str, Any]] = {
        (r["model"], r["explainer"] if by_explainer else "", r["metric"]): r for r in recs}
    scores: dict[tuple[str, str, str], float] = {}
    for m in cols:
        vals = [(k, cell[(*k, m)]["mean"]) for k in keys if (*k, m) in cell
                and not _nan(cell[(*k, m)]["mean"]) and cell[(*k, m)]["role"] != "control"]
        ordered = sorted(vals, key=lambda kv: kv[1], reverse=direction[m])
        for rank, (k, _) in enumerate(ordered):
            scores[(*k, m)] = 1.0 - rank / (len(ordered) - 1) if len(ordered) > 1 else 1.0

    def row_score(k: tuple[str, str]) -> float:
        s = [scores[(*k, m)] for m in cols if (*k, m) in scores]
        return sum(s) / len(s) if s else -1.0

    def is_control(k: tuple[str, str]) -> bool:
        return any(cell[(*k, m)]["role"] == "control" for m in cols if (*k, m) in cell)

    keys.sort(key=lambda k: (is_control(k), k[1] if by_explainer else "", -row_score(k)))
    header = ["model"] + (["explainer"] if by_explainer else []) + \
             [f"{m} {'↑' if direction[m] else '↓'}" for m in cols] + ["N"]
    rows, classes = [], []
    for k in keys:
        line: list[Cell | str] = [k[0]] + ([k[1] or "-"] if by_explainer else [])
        ns = set()
        for m in cols:
            r = cell.get((*k, m))
            if r is None:
                line.append(Cell("-"))
                continue
            ns.add(r["n"] + r["n_nan"])
            text = f"{fmt(r['mean'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if r["n"] else "-"
            if r["n_nan"]:
                text += f" ({r['n_nan']} NaN)"
            sc = scores.get((*k, m))
            line.append(Cell(text, sc, bold=sc == 1.0 and len(keys) > 1))
        line.append(Cell("/".join(str(n) for n in sorted(ns))))
        rows.append(line)
        classes.append("control" if is_control(k) else "")
    return Table(header, rows, classes, caption)


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def prediction_table(models: dict[str, Any], results: list[dict[str, Any]], task: str) -> Table:
    """Accuracy (or MAE and RMSE, original units) per test set, agreement and KL with the teacher (metrics.json), plus the
    eval-subset agreement and KL (report, mean [95 % CI])."""
    score = "acc" if task == "classification" else "mae"
    sets: list[str] = []
    for m in models.values():
        for k, v in m.metrics.items():
            if k.endswith(f"_{score}") and isinstance(v, (int, float)):
                s = k[: -len(score) - 1]
                if s not in sets:
                    sets.append(s)
    header = ["model", "role", "arch", "method", "params"]
    retrieval = [k for k in ("r1", "r5") if any(isinstance(m.metrics.get(f"test_{k}"), float)
                                                  for m in models.values())]
    for s in sets:
        header += [f"{s} {score} {'↑' if score == 'acc' else '↓'}"]
        if task == "classification":
            header += [f"{s} agreement ↑", f"{s} KL ↓"]
        else:
            header += [f"{s} rmse ↓"]
        header += [f"{s} R@{k[1:]} ↑" for k in retrieval if s == "test"]
    sub = {(r["metric"], r["model"]): r for r in results if r["category"] == "prediction"}
    extra = [m for m in ("agreement", "kl_divergence") if any(k[0] == m for k in sub)]
    header += [f"eval-subset {m}" for m in extra]
    rows = []
    for name, m in models.items():
        mt = m.metrics
        line: list[Cell | str] = [name, m.role, str(mt.get("arch", m.config.name or m.config.factory)),
                                  str(mt.get("method", "-")),
                                  f"{mt['params']:,}" if isinstance(mt.get("params"), int) else "-"]
        for s in sets:
            line.append(fmt(mt.get(f"{s}_{score}")))
            if task == "classification":
                line += [fmt(mt.get(f"{s}_agreement")), fmt(mt.get(f"{s}_kl"))]
            else:
                line += [fmt(mt.get(f"{s}_rmse"))]
            line += [fmt(mt.get(f"{s}_{k}")) for k in retrieval if s == "test"]
        for e in extra:
            r = sub.get((e, name))
            line.append(f"{fmt(r['mean'])} [{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if r else "-")
        rows.append(line)
    return Table(header, rows, caption="test-set columns from each model's metrics.json (whole test "
                 "split); eval-subset columns recomputed by the report from the exported logits"
                 + ("; R@k: test queries against the train gallery, cosine of pooled embeddings, "
                    "hit = same label" if retrieval else ""))


def cost_table(agg: dict[str, Any]) -> Table:
    """Seconds per metric (summed over its rows), rows, samples per row."""
    per: dict[str, dict[str, Any]] = {}
    for r in agg["results"]:
        p = per.setdefault(r["metric"], {"rows": 0, "samples": set()})
        p["rows"] += 1
        p["samples"].add(r["n"] + r["n_nan"])
    rows = []
    total = 0.0
    for m, sec in sorted(agg["cost_seconds"].items(), key=lambda kv: -kv[1]):
        p = per.get(m, {"rows": 0, "samples": set()})
        total += sec
        rows.append([m, agg["metrics"].get(m, {}).get("category", "-"), str(p["rows"]),
                     "/".join(str(s) for s in sorted(p["samples"])), f"{sec:.2f}",
                     f"{sec / p['rows']:.3f}" if p["rows"] else "-"])
    rows.append(["total", "", "", "", f"{total:.2f}", ""])
    return Table(["metric", "category", "rows", "samples per row", "seconds", "seconds per row"], rows,
                 caption=f"wall-clock on {agg.get('device', 'cpu')}, model loading excluded")


def params_table(params: dict[str, dict[str, Any]]) -> Table:
    rows = [[m, ", ".join(f"{k}={v}" for k, v in p.items()) or "(metric defaults)"]
            for m, p in params.items()]
    return Table(["metric", "parameters (report defaults; others: the metric's own defaults)"], rows)


def weight_map_table(models: dict[str, Any]) -> Table | None:
    """``weight_map_*`` fields of the students' metrics.json: how well the teacher maps that
    weighted each student's loss sit on the objects (train split, written by the run)."""
    cols = sorted({k for m in models.values() for k in m.metrics if k.startswith("weight_map_")})
    if not cols:
        return None
    rows = [[n] + [fmt(m.metrics.get(c)) for c in cols] for n, m in models.items()
            if any(c in m.metrics for c in cols)]
    return Table(["student"] + cols, rows, caption="from each student's metrics.json (the maps the "
                 "loss saw on the training split, against the ground-truth masks)")
