"""Sample explorer: pick a sample (by index, or sorted/filtered by alignment, correctness or
disagreement), see the image, its mask, the teacher's and each student's saliency on one colour
scale, and every student's ABF attention maps per fused stage with per-sample alignment values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from viewer_lib import alignment as A
from viewer_lib import figures as F
from viewer_lib.arrays import Explanations, predictions, sample_table
from viewer_lib.context import Ctx, bound, choose
from viewer_lib.runs import no_explanations

ORDERS = ["dataset index", "alignment: worst first", "alignment: best first", "incorrect first",
          "disagreement first"]
FILTERS = ["incorrect only", "disagrees with the teacher only", "teacher correct only"]
ORDERS_REGRESSION = ORDERS[:3] + ["largest error first", "largest gap to the teacher first"]
"""Regression runs sort by the absolute error (``abs_error``) and the gap to the teacher's
prediction (``teacher_gap``); the correct/incorrect filters do not apply to them."""


def orders_and_filters(ex: Explanations) -> tuple[list[str], list[str]]:
    """The order and filter choices of the run's task."""
    return (ORDERS_REGRESSION, []) if ex.index.get("task") == "regression" else (ORDERS, FILTERS)


def _worst_first() -> None:
    st.session_state["order"] = ORDERS[1]
    st.session_state["filters"] = []
    st.session_state["_jump_first"] = True


def ordered(tab: pd.DataFrame, focus: str, metric: str, order: str, filters: list[str]) -> list[int]:
    """Dataset indices of the samples after filtering and sorting (stable, NaN last)."""
    t = tab
    if "incorrect only" in filters and f"{focus}:correct" in t:
        t = t[~t[f"{focus}:correct"]]
    if "disagrees with the teacher only" in filters and f"{focus}:agree" in t:
        t = t[~t[f"{focus}:agree"]]
    if "teacher correct only" in filters and "teacher:correct" in t:
        t = t[t["teacher:correct"]]
    col = f"{focus}:{metric}"
    if order.startswith("alignment") and col in t:
        t = t.sort_values(col, ascending=order.endswith("worst first"), kind="stable", na_position="last")
    elif order == "incorrect first" and f"{focus}:correct" in t:
        t = t.sort_values(f"{focus}:correct", kind="stable")
    elif order == "disagreement first" and f"{focus}:agree" in t:
        t = t.sort_values(f"{focus}:agree", kind="stable")
    elif order == "largest error first" and f"{focus}:abs_error" in t:
        t = t.sort_values(f"{focus}:abs_error", ascending=False, kind="stable", na_position="last")
    elif order == "largest gap to the teacher first" and f"{focus}:teacher_gap" in t:
        t = t.sort_values(f"{focus}:teacher_gap", ascending=False, kind="stable", na_position="last")
    return [int(i) for i in t["index"]]


def _label(ex: Explanations, c: float | None) -> str:
    if c is not None and ex.index.get("task") == "regression":  # a value in original units
        return f"{float(c):.3g}"
    names = ex.index.get("class_names") or []
    c = None if c is None else int(c)
    return "-" if c is None else (names[c] if 0 <= c < len(names) else str(c))


@st.cache_data(show_spinner=False, max_entries=32)
def option_labels(path: str, version: float, explainer: str, focus: str, metric: str) -> dict[int, str]:
    """"#index · class · metric value · correct?" for every sample (built once, vectorised);
    regression: "#index · y label · metric value · |err| absolute error"."""
    tab = sample_table(path, version, explainer)
    out = ("#" + tab["index"].astype(str)).to_numpy(dtype=object)
    if "label_name" in tab:
        out = out + " · " + tab["label_name"].astype(str).to_numpy(dtype=object)
    elif f"{focus}:abs_error" in tab and "label" in tab:
        out = out + np.array([f" · y {float(y):.3g}" for y in tab["label"]], dtype=object)
    col = f"{focus}:{metric}"
    if col in tab:
        v = tab[col].to_numpy(dtype=float)
        out = out + np.array([f" · {metric} {x:.2f}" if np.isfinite(x) else "" for x in v], dtype=object)
    if f"{focus}:correct" in tab:
        out = out + np.where(tab[f"{focus}:correct"].to_numpy(dtype=bool), " · ✓", " · ✗")
    if f"{focus}:abs_error" in tab:
        err = tab[f"{focus}:abs_error"].to_numpy(dtype=float)
        out = out + np.array([f" · |err| {x:.3g}" if np.isfinite(x) else "" for x in err], dtype=object)
    return dict(zip(tab["index"].astype(int).tolist(), out.tolist()))


def _pick(ctx: Ctx, tab: pd.DataFrame, focus: str, metric: str, order: str, filters: list[str]) -> int | None:
    cands = ordered(tab, focus, metric, order, filters)
    if not cands:
        st.warning("No sample passes these filters.")
        return None
    if st.session_state.pop("_jump_first", False) or st.session_state.get("current_sample") not in cands:
        st.session_state["current_sample"] = cands[0]
    labels = option_labels(str(ctx.path), ctx.stamp, ctx.explainer, focus, metric)
    c1, c2, c3 = st.columns([6, 1, 1])
    pos = cands.index(st.session_state["current_sample"])
    if c2.button("◀ Prev", disabled=pos == 0, key="prev"):
        st.session_state["current_sample"] = cands[pos - 1]
    if c3.button("Next ▶", disabled=pos == len(cands) - 1, key="next"):
        st.session_state["current_sample"] = cands[pos + 1]
    with c1:
        value = bound(st.selectbox, f"Sample ({len(cands)} of {len(tab)}; type an index to search)",
                      cands, "current_sample", "sample", format_func=lambda i: labels.get(i, f"#{i}"))
    return int(value)


def render(ctx: Ctx) -> None:
    ex, tab = ctx.ex, None
    if ex is None:  # a multi-modal run: frame strips of the video models (issue 7)
        from viewer_lib.video_strip import render_video

        if render_video(ctx.path, str(ctx.run.get("name") or ctx.path.name)):
            return
    st.header("Sample explorer")
    if ex is None or not ex.inputs or not ctx.explainer:
        st.info(f"No exported explanations, so no samples to show: {no_explanations(ctx.run)}.")
        return
    for note in ex.notes:
        st.warning(note)
    tab = sample_table(str(ctx.path), ctx.stamp, ctx.explainer)
    studs = [n for n in ex.models if n != "teacher"]
    if not studs:
        st.info("No student explanations in this run.")
        return
    with_maps = [s for s in studs if f"{s}:cosine" in tab] or studs
    choose("focus", with_maps, next((s for s in reversed(with_maps) if ex.stages(s)), with_maps[-1]))
    metrics = [m for m in ("cosine", "spearman") if f"{st.session_state['focus']}:{m}" in tab] or ["cosine"]
    choose("metric", metrics)
    orders, filter_names = orders_and_filters(ex)
    choose("order", orders)
    st.session_state["filters"] = [f for f in st.session_state.get("filters", []) if f in filter_names]
    c1, c2, c3, c4 = st.columns([2, 1, 2, 2])
    focus = c1.selectbox("Sort and filter by student", with_maps, key="focus")
    metric = c2.selectbox("Alignment", metrics, key="metric")
    order = c3.selectbox("Order", orders, key="order")
    filters = c4.multiselect("Filter", filter_names, key="filters")
    st.button("Worst-aligned first", on_click=_worst_first, type="primary", key="worst",
              help=f"sort by {metric} with the teacher, lowest first, no filters")
    st.caption(f"Alignment values: {tab.attrs.get('alignment_source', 'computed by the viewer')}.")
    i = _pick(ctx, tab, focus, metric, order, filters)
    if i is None:
        return
    panel(ctx, ex, tab, i, studs)


def panel(ctx: Ctx, ex: Explanations, tab: pd.DataFrame, i: int, studs: list[str]) -> None:
    """Saliency of the teacher and every shown student in one row (one colour scale), their
    per-sample numbers, then each student's ABF maps per stage; downloads of the table and panel."""
    pos = int(tab.index[tab["index"] == i][0])
    st.session_state.setdefault("opacity", 0.6)
    choose("scale", ["shared", "per map"])
    st.session_state.setdefault("shown", studs)
    st.session_state["shown"] = [s for s in st.session_state["shown"] if s in studs]
    c1, c2, c3 = st.columns([1, 1, 2])
    alpha = c1.slider("Overlay opacity", 0.0, 1.0, step=0.05, key="opacity")
    scale = c2.radio("Colour scale", ["shared", "per map"], key="scale", horizontal=True,
                     help="shared: one scale for the teacher and every student on this sample")
    shown = c3.multiselect("Students", studs, key="shown")
    disp = ex.inputs["display"][pos] if "display" in ex.inputs else np.zeros((32, 32, 3), np.uint8)
    e = ctx.explainer
    maps = {m: ex.map(m, e)[pos, 0].astype(np.float64) for m in ["teacher", *shown]
            if ex.map(m, e) is not None}
    lo = min((float(np.nanmin(v)) for v in maps.values()), default=0.0)
    hi = max((float(np.nanmax(v)) for v in maps.values()), default=1.0)

    def rng(v: np.ndarray) -> tuple[float, float]:
        return (lo, hi) if scale == "shared" else (float(np.nanmin(v)), float(np.nanmax(v)))

    label = ex.inputs["labels"][pos].item() if "labels" in ex.inputs else None
    tp = predictions(ex.models.get("teacher", {}))
    row = tab.iloc[pos]
    top = [(F.image_tile(disp), f"image #{i} · label {_label(ex, label)}")]
    if "masks" in ex.inputs:
        top.append((F.mask_tile(disp, ex.inputs["masks"][pos]), "ground-truth mask"))
    for m, v in maps.items():
        if m == "teacher":
            cap = f"teacher · {e} · pred {'-' if tp is None else _label(ex, tp[pos].item())}"
        else:
            cos = row.get(f"{m}:cosine", np.nan)
            cap = f"{m}" + (f" · cos {cos:.2f}" if np.isfinite(cos) else "")
        top.append((F.overlay(disp, v, *rng(v), alpha), cap))
    F.show(top)
    if scale == "shared":
        F.show([(F.colourbar(lo, hi), f"{e} · shared scale {lo:.3g} … {hi:.3g}")], width=240)
    if missing := [s for s in shown if s not in maps]:
        st.caption(f"No '{e}' map exported for: {', '.join(missing)}.")
    st.table(numbers(ex, row, shown))
    rows: list[list[tuple[np.ndarray, str]]] = [top]
    st.markdown("##### ABF attention maps per fused stage (own feature, review path)")
    tmap = maps.get("teacher")
    plain = []
    for s in shown:
        tiles = attention_tiles(ex, pos, s, tmap)
        if tiles:
            F.show(tiles)
            rows.append(tiles)
        elif (ex.index.get("models", {}).get(s, {}).get("attention")):
            st.warning(f"{s}: the ABF attention maps listed in index.json are missing from its npz.")
        else:
            plain.append(s)
    if plain:
        st.caption(f"No ABF attention maps for {', '.join(plain)} (only review-fusion students such "
                   "as ReviewKD have them).")
    st.caption("Attention maps of a student share one scale; cos = cosine with the teacher map "
               "pooled to the stage's size.")
    d1, d2 = st.columns(2)
    with d1:
        F.download("Per-sample metrics (CSV)", lambda: tab.to_csv(index=False).encode(),
                   f"{ctx.run['name']}_{e}_per_sample.csv", "text/csv", "dl_csv")
    with d2:
        title = f"{ctx.run['name']} · sample #{i} · {e}"
        F.download("Current panel (PNG)", lambda: F.compose_png(rows, title),
                   f"{ctx.run['name']}_sample{i}_{e}.png", "image/png", "dl_png")


NUMBERS = (("pred", "prediction"), ("correct", "correct"), ("agree", "agrees with teacher"),
           ("abs_error", "absolute error"), ("teacher_gap", "gap to teacher"),
           ("cosine", "cosine"), ("spearman", "Spearman"), ("energy_in_mask", "energy in mask"))


def numbers(ex: Explanations, row: pd.Series, shown: list[str]) -> pd.DataFrame:
    """One row per student: its prediction and alignment numbers on this sample (as text)."""
    out = []
    extra = sorted({c.split(":", 1)[1] for c in row.index if ":" in c} - {k for k, _ in NUMBERS})
    for s in shown:
        r = {"student": s}
        for k, name in NUMBERS + tuple((x, x) for x in extra):
            v = row.get(f"{s}:{k}")
            if v is not None and not (isinstance(v, float) and not np.isfinite(v)):
                r[name] = _num(ex, k, v)
        out.append(r)
    return pd.DataFrame(out).set_index("student").fillna("-") if out else pd.DataFrame()


def _num(ex: Explanations, k: str, v) -> str:
    if k == "pred":  # a class id, or a regression prediction in original units
        return _label(ex, v)
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    return f"{float(v):.3f}"


def attention_tiles(ex: Explanations, pos: int, s: str,
                    tmap: np.ndarray | None) -> list[tuple[np.ndarray, str]]:
    """Both ABF maps of every fused stage of student ``s`` (one scale), captioned with the cosine
    against the teacher map pooled to the stage's size."""
    att = {g: ex.models[s][f"attn_{g}"][pos].astype(np.float64) for g in ex.stages(s)}
    if not att:
        return []
    lo = min(float(a.min()) for a in att.values())
    hi = max(float(a.max()) for a in att.values())
    tiles = []
    for g, a in att.items():
        h, w = a.shape[-2:]
        tp = A.resize_map(tmap, (h, w))[None] if tmap is not None else None
        for k, which in enumerate(("own", "review")[: a.shape[0]]):
            cap = f"{s} · {g} {which} {h}×{w}"
            if tp is not None:
                cap += f" · cos {float(A.cosine(a[k][None], tp)[0]):.2f}"
            tiles.append((F.heat(a[k], lo, hi), cap))
    return tiles
