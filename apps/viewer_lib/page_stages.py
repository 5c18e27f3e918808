"""Stage view: one student's fused stages side by side at their own resolutions, with the teacher
saliency pooled to each stage's size -- what the saliency-weighted review loss actually saw
(DESIGN 3.5: M_j = area-resize(M, h x w), W_j = (1 - a) + a * M_j / mean(M_j))."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from viewer_lib import alignment as A
from viewer_lib import figures as F
from viewer_lib.arrays import Explanations, load_explanations, predictions
from viewer_lib.context import Ctx, bound, choose
from viewer_lib.runs import no_explanations


def teacher_source(ex: Explanations, explainer: str | None, student: str) -> tuple[np.ndarray | None, str]:
    """The (N,1,H,W) teacher map the student's loss used (its exported weight_map), else the
    teacher's map of the chosen explainer."""
    wm = ex.models[student].get("weight_map")
    if wm is not None:
        return wm, "the teacher map this student's weighted loss used (weight_map)"
    tm = ex.map("teacher", explainer) if explainer else None
    if tm is None:
        return None, "none (the export has no teacher map)"
    return tm, f"the teacher's {explainer} map (this student exported no weight_map)"


@st.cache_data(show_spinner=False, max_entries=32)
def stage_stats(path: str, version: float, student: str, explainer: str | None) -> pd.DataFrame:
    """Per stage, means over samples of the ABF maps and of their cosine with the pooled teacher map."""
    ex = load_explanations(path, version)
    tmap, _ = teacher_source(ex, explainer, student)
    rows = []
    for g in ex.stages(student):
        a = ex.models[student][f"attn_{g}"].astype(np.float64)
        h, w = a.shape[-2:]
        row = {"stage": g, "size": f"{h}×{w}", "own mean": float(a[:, 0].mean())}
        if a.shape[1] > 1:
            row["review mean"] = float(a[:, 1].mean())
        if tmap is not None:
            tp = A.resize_map(tmap.astype(np.float64), (h, w))
            row["cos(own, teacher)"] = float(np.nanmean(A.cosine(a[:, :1], tp)))
            if a.shape[1] > 1:
                row["cos(review, teacher)"] = float(np.nanmean(A.cosine(a[:, 1:2], tp)))
        rows.append(row)
    return pd.DataFrame(rows)


def render(ctx: Ctx) -> None:
    st.header("Stage view")
    ex = ctx.ex
    if ex is None or not ex.inputs:
        st.info(f"No exported explanations, so no stage maps to show: {no_explanations(ctx.run)}.")
        return
    for note in ex.notes:
        st.warning(note)
    fused = [s for s in ex.models if s != "teacher" and ex.stages(s)]
    if not fused:
        st.info("No student in this run has ABF attention maps (only review-fusion students such "
                "as ReviewKD fuse stages).")
        return
    choose("stage_student", fused, fused[-1])
    student = st.selectbox("Student", fused, key="stage_student")
    idx = [int(i) for i in ex.inputs.get("indices", np.arange(ex.n))]
    pos_of = {v: k for k, v in enumerate(idx)}
    names = list(ex.index.get("class_names") or [])
    labels = ex.inputs.get("labels")

    def fmt(v: int) -> str:
        c = int(labels[pos_of[v]]) if labels is not None else -1
        return f"#{v} · {names[c]}" if 0 <= c < len(names) else f"#{v}"

    c1, c2 = st.columns([3, 1])
    with c1:
        i = bound(st.selectbox, "Sample", idx, "current_sample", "stage_sample", format_func=fmt)
    choose("att_scale", ["0 … 1", "stretched"])
    stretch = c2.radio("Attention scale", ["0 … 1", "stretched"], key="att_scale", horizontal=True,
                       help="ABF gates are sigmoids in 0 … 1; 'stretched' maps each one's min … max"
                       ) == "stretched"
    pos = pos_of[i]
    params = ctx.run["models"].get(student, {}).get("params") or {}
    mix = float(params.get("saliency_mix") or 0.0)
    tmaps, source = teacher_source(ex, ctx.explainer, student)
    gated = False
    if params.get("gate_wrong") and "labels" in ex.inputs:
        tp = predictions(ex.models.get("teacher", {}))
        gated = tp is not None and int(tp[pos]) != int(ex.inputs["labels"][pos])
    st.caption(f"Teacher saliency: {source}. saliency_mix a = {mix:g}"
               + (" (plain ReviewKD: uniform weights)" if mix == 0 else "")
               + (" · gated to uniform: the teacher is wrong here" if gated else ""))
    disp = ex.inputs["display"][pos] if "display" in ex.inputs else None
    tmap = tmaps[pos, 0].astype(np.float64) if tmaps is not None else None
    if disp is not None:
        first = [F.image_tile(disp)]
        caps = [f"image #{i}"]
        if tmap is not None:
            first.append(F.heat(tmap, 0.0, max(float(tmap.max()), 1e-12)))
            caps.append(f"teacher map {tmap.shape[0]}×{tmap.shape[1]}")
        st.image(first, caption=caps, width=F.TILE, output_format="PNG")
    stages = ex.stages(student)
    cols = st.columns(len(stages))
    tiles = []
    for col, g in zip(cols, stages):
        a = ex.models[student][f"attn_{g}"][pos].astype(np.float64)
        h, w = a.shape[-2:]
        with col:
            st.markdown(f"**{g}** · {h}×{w}")
            imgs, caps = [], []
            for k, which in enumerate(("own feature", "review path")[: a.shape[0]]):
                lo, hi = (float(a[k].min()), float(a[k].max())) if stretch else (0.0, 1.0)
                imgs.append(F.heat(a[k], lo, hi))
                caps.append(f"ABF {which}")
            if tmap is not None:
                mj = A.resize_map(tmap, (h, w))
                imgs.append(F.heat(mj, 0.0, max(float(mj.max()), 1e-12)))
                caps.append(f"teacher pooled to {h}×{w}")
                if mix > 0:
                    wj = A.level_weights(tmap, (h, w), mix, uniform=gated)
                    imgs.append(F.heat(wj, 0.0, float(wj.max())))
                    caps.append(f"weight W ({wj.min():.2f} … {wj.max():.2f})")
            st.image(imgs, caption=caps, width=F.TILE, output_format="PNG")
            tiles += list(zip(imgs, [f"{g} {c}" for c in caps]))
    scale = "their own min … max" if stretch else "a fixed 0 … 1 scale (ABF sigmoid gates)"
    st.caption(f"Attention maps on {scale}; pooled teacher maps and weights on their own scales. "
               "Each stage is shown at its own resolution.")
    st.subheader("All samples")
    st.dataframe(stage_stats(str(ctx.path), ctx.stamp, student, ctx.explainer), hide_index=True)
    title = f"{ctx.run['name']} · {student} · #{i}"
    F.download("Current stages (PNG)", lambda: F.compose_png([tiles], title),
               f"{ctx.run['name']}_{student}_sample{i}_stages.png", "image/png", "dl_stages_png")
