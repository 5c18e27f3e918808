"""Overview page: status, summary table (one or several runs), training curves,
deletion/insertion curves and the distributions of per-sample teacher-student alignment."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from viewer_lib import figures as F
from viewer_lib.arrays import aggregates, curves, sample_table
from viewer_lib.context import Ctx, ensure_inside
from viewer_lib.runs import history_frame, load_run, stamp, students

KEY_METRICS = ("deletion", "insertion", "pointing_game", "energy_pointing_game", "cosine", "spearman",
               "kendall_tau", "ssim")


def status_banner(run: dict[str, Any]) -> None:
    state = run["state"]
    if state == "complete":
        st.success(f"Run `{run['name']}` is complete.")
    elif state == "running":
        st.info(f"Run `{run['name']}` is still running: showing what it has written so far.")
    elif state == "interrupted":
        s = run["status"]
        st.warning(f"Run `{run['name']}` was interrupted: its writer (pid {s.get('pid', '?')} on "
                   f"{s.get('host', '?')}) is gone without finishing. Showing what it wrote; continue "
                   f"it with `python -m xkd.run EXPERIMENT --resume --out {run['path']}`.")
    elif state == "failed":
        st.error(f"Run `{run['name']}` failed: {run['status'].get('error', 'no reason recorded')}")
    else:
        st.warning(f"Run `{run['name']}` has no status.json: it may be partial.")
    if run["missing"]:
        st.info("Not in this run yet:\n" + "\n".join(f"- {m}" for m in run["missing"]))


def aggregate_means(agg: dict[str, Any] | None, models: list[str]) -> pd.DataFrame:
    """(metric, model, explainer, mean) for every object with a numeric ``mean`` in aggregates.json."""
    rows: list[dict[str, Any]] = []

    def walk(obj: Any, trail: list[str]) -> None:
        if not isinstance(obj, dict):
            return
        if isinstance(obj.get("mean"), (int, float)):
            model = obj.get("model") or next((t for t in trail if t in models), None)
            metric = obj.get("metric") or next((t for t in trail if t in KEY_METRICS), None)
            if model and metric:
                rest = [t for t in trail if t not in (model, metric)]
                rows.append({"metric": metric, "model": model, "explainer": obj.get("explainer") or
                             (rest[-1] if rest else ""), "mean": float(obj["mean"])})
        for k, v in obj.items():
            walk(v, trail + [str(k)])

    walk(agg or {}, [])
    return pd.DataFrame(rows, columns=["metric", "model", "explainer", "mean"])


def _fmt(row: dict[str, Any], col: str) -> Any:
    if f"{col}_mean" in row:
        m, s = row.get(f"{col}_mean"), row.get(f"{col}_std") or 0.0
        return f"{m:.3f} ± {s:.3f}" if col != "params" else int(m)
    return row.get(col)


def summary_rows(ctx_run: dict[str, Any], path: str, st_: float, explainer: str | None) -> pd.DataFrame:
    """Summary rows of one run, with the viewer's alignment means and the report's key metrics."""
    run = ctx_run
    rows = list((run["summary"] or {}).get("rows") or [])
    if not rows:  # a run still training: the metrics.json written so far
        rows = [{**m["metrics"], "model": n} for n, m in run["models"].items() if m.get("metrics")]
    sets = (run["summary"] or {}).get("test_sets") or ["test"]
    score = "acc" if run["task"] == "classification" else "mae"
    cols = [f"{s}_{score}" for s in sets] + [f"{s}_agreement" for s in sets if score == "acc"]
    cols += [f"{s}_rmse" for s in sets if score == "mae"]
    out = []
    for r in rows:
        o = {"run": run["name"], "model": r.get("model"), "method": r.get("method"), "arch": r.get("arch")}
        for c in cols + ["params", "train_seconds"]:
            o[c] = _fmt(r, c)
        out.append(o)
    df = pd.DataFrame(out)
    if explainer and len(df):
        extra: dict[str, pd.Series] = {}  # joined once: one insert per column fragments the frame
        tab = sample_table(path, st_, explainer)
        for metric in ("cosine", "spearman", "energy_in_mask"):
            vals = {m: float(np.nanmean(tab[f"{m}:{metric}"])) for m in df["model"]
                    if f"{m}:{metric}" in tab and np.isfinite(tab[f"{m}:{metric}"]).any()}
            if vals:
                extra[f"{metric} ({explainer})"] = df["model"].map(vals)
        means = aggregate_means(aggregates(path), list(df["model"]))
        means = means[means["explainer"].isin([explainer, ""])]
        for metric, g in means.groupby("metric"):
            extra[f"{metric} ({explainer}, report)"] = df["model"].map(dict(zip(g["model"], g["mean"])))
        if extra:
            df = pd.concat([df, pd.DataFrame(extra, index=df.index)], axis=1)
    return df


def _uniform(df: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing numbers and "mean ± std" text (single- and multi-seed runs) become text."""
    for c in df.columns:
        v = df[c]
        if v.dtype == object and v.map(lambda x: isinstance(x, str)).any() and v.map(
                lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)).any():
            df[c] = v.map(lambda x: "-" if x is None or (isinstance(x, float) and np.isnan(x))
                          else (f"{x:.3f}" if isinstance(x, float) else str(x)))
    return df


def render(ctx: Ctx) -> None:
    run = ctx.run
    st.header(f"Overview · {run['name']}")
    status_banner(run)
    if run["seeds"]:
        st.info("Multi-seed run: the table shows mean ± std over seeds. Open one seed "
                f"({', '.join(run['seeds'])}) in the sidebar for its samples.")
    others = [r for r in ctx.runs if (ctx.root / r).resolve() != ctx.path.resolve()]
    comp = st.multiselect("Compare with other runs", others, key="compare")
    frames = [summary_rows(run, str(ctx.path), ctx.stamp, ctx.explainer)]
    for rel in comp:
        p = ensure_inside(ctx.root, ctx.root / rel)
        s = stamp(p)
        frames.append(summary_rows(load_run(str(p), s), str(p), s, ctx.explainer))
    table = _uniform(pd.concat(frames, ignore_index=True))
    st.subheader("Summary")
    if table.empty:
        st.info("No models have finished yet: no summary.json and no metrics.json.")
    else:
        st.dataframe(table if comp else table.drop(columns=["run"]), hide_index=True)

    st.subheader("Training curves")
    hist = history_frame(run)
    if hist.empty:
        st.info("No history.jsonl yet (written after each epoch).")
    else:
        series = sorted(hist["series"].unique())
        default = "val_acc" if "val_acc" in series else ("loss" if "loss" in series else series[0])
        if st.session_state.get("series") not in series:
            st.session_state["series"] = default
        s = st.selectbox("Series", series, key="series")
        st.altair_chart(F.line_chart(hist[hist["series"] == s], "epoch", "value", "model", s),
                        width="stretch")

    st.subheader("Deletion / insertion curves")
    cv = curves(aggregates(str(ctx.path)))
    if ctx.explainer:
        cv = cv[cv["explainer"].isin([ctx.explainer, ""])]
    if cv.empty:
        st.info("No deletion/insertion curves: they are computed by `python -m xkd.report RUN` "
                "(RUN/metrics/aggregates.json); the viewer never runs a model.")
    else:
        c1, c2 = st.columns(2)
        for col, metric in zip((c1, c2), ("deletion", "insertion")):
            part = cv[cv["metric"] == metric]
            if len(part):
                col.altair_chart(F.line_chart(part, "fraction", "score", "model", metric),
                                 width="stretch")

    st.subheader("Teacher-student alignment per sample")
    if ctx.ex is None or not ctx.explainer:
        st.info("No explanations in this run yet, so no per-sample alignment.")
        return
    tab = sample_table(str(ctx.path), ctx.stamp, ctx.explainer)
    long = [pd.DataFrame({"student": s, "metric": m, "value": tab[f"{s}:{m}"]})
            for s in students(run) for m in ("cosine", "spearman") if f"{s}:{m}" in tab]
    if not long:
        st.info("No student has both its own and the teacher's map for this explainer.")
        return
    data = pd.concat(long, ignore_index=True)
    c1, c2 = st.columns(2)
    for col, m in zip((c1, c2), ("cosine", "spearman")):
        col.altair_chart(F.histogram(data[data["metric"] == m], "value", "student",
                                     f"{m} with the teacher ({ctx.explainer})"), width="stretch")
    st.caption(f"Alignment source: {tab.attrs.get('alignment_source', '')}.")
