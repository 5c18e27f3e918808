"""Report figures (matplotlib, Agg backend), each returned as PNG bytes or None when it has no data.

reference/xai_metrics.md §7.2: deletion/insertion curves with the random baseline (4), alignment
distributions and top-k IoU curves (6), the example grid with best, median and worst aligned
samples (8), the cascading-randomisation curves (7); plus the per-stage ABF attention maps of each
ReviewKD student and the training curves from ``history.jsonl``.
"""

from __future__ import annotations

import io as _io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from xkd.report.compute import CONTROLS, Computed  # noqa: E402
from xkd.report.loading import RunData  # noqa: E402

DPI = 90
CMAP = "inferno"


def _png(fig: Any) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _style(name: str) -> dict[str, Any]:
    if name in CONTROLS:
        return {"color": "0.5", "linestyle": "--" if name.endswith("random") else ":", "linewidth": 1.2}
    return {"linewidth": 1.6}


def curves(comp: Computed, explainer: str) -> bytes | None:
    """Mean deletion and insertion curves per model (this explainer) with the control rows."""
    panels = [m for m in ("deletion", "insertion")
              if any(r.metric == m and r.result.curves is not None for r in comp.rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        for r in comp.rows:
            if r.metric != metric or r.explainer not in (explainer, None) or r.result.curves is None:
                continue
            x = r.result.curve_x.numpy()
            y = r.result.curves.numpy()
            mean = np.nanmean(y, axis=0)
            ax.plot(x, mean, label=f"{r.model} (AUC {r.result.mean():.3f})", **_style(r.model))
            if r.model not in CONTROLS and y.shape[0] > 1:
                se = np.nanstd(y, axis=0) / np.sqrt(y.shape[0])
                ax.fill_between(x, mean - 1.96 * se, mean + 1.96 * se, alpha=0.12)
        better = "lower" if metric == "deletion" else "higher"
        ax.set(title=f"{metric} ({explainer}); {better} AUC is better",
               xlabel="fraction of pixels " + ("removed" if metric == "deletion" else "restored"),
               ylabel="p(target)", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    return _png(fig)


ALIGN = ("cosine", "spearman", "kendall_tau", "ssim")


def alignment(comp: Computed, explainer: str) -> bytes | None:
    """Per-sample distributions (violin + box) of the alignment metrics, students and controls."""
    metrics = [m for m in ALIGN if any(r.metric == m and r.explainer == explainer for r in comp.rows)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = [r for r in comp.rows if r.metric == metric and r.explainer == explainer]
        data = [r.result.values.numpy()[~np.isnan(r.result.values.numpy())] for r in rows]
        labels = [r.model.replace("control_", "ctl:") for r in rows]
        pos = [i for i, d in enumerate(data) if d.size > 1 and np.ptp(d) > 0]
        if pos:
            ax.violinplot([data[i] for i in pos], positions=pos, showextrema=False)
        ax.boxplot([d if d.size else [np.nan] for d in data], positions=range(len(data)), widths=0.25,
                   showfliers=False)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{metric} vs teacher ({explainer})", fontsize=9)
    return _png(fig)


def topk(comp: Computed, explainer: str) -> bytes | None:
    """Mean top-k IoU with the teacher's map over k (fraction of pixels)."""
    rows = [r for r in comp.rows if r.metric == "topk_iou" and r.explainer == explainer
            and r.result.curves is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for r in rows:
        ax.plot(r.result.curve_x.numpy(), np.nanmean(r.result.curves.numpy(), axis=0), marker="o",
                markersize=3, label=r.model, **_style(r.model))
    ax.set(xscale="log", xlabel="k (fraction of pixels)", ylabel="IoU of top-k sets",
           title=f"top-k IoU with the teacher ({explainer})", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    return _png(fig)


def _pick(values: np.ndarray, fixed: int) -> list[tuple[int, str]]:
    """Fixed first samples plus the best, median and worst by ``values`` (NaN ignored)."""
    out = [(i, "fixed") for i in range(min(fixed, len(values)))]
    ok = np.where(~np.isnan(values))[0]
    if ok.size:
        order = ok[np.argsort(values[ok], kind="stable")]
        for i, tag in ((order[-1], "best"), (order[len(order) // 2], "median"), (order[0], "worst")):
            out.append((int(i), tag))
    return out


def _rgb(a: np.ndarray, cmap: str, lo: float, hi: float, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map coloured with ``cmap`` on [lo, hi] and resized (nearest) to ``size``, (H,W,3)."""
    rows = np.arange(size[0]) * a.shape[0] // size[0]
    cols = np.arange(size[1]) * a.shape[1] // size[1]
    a = a[rows][:, cols]
    z = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
    return matplotlib.colormaps[cmap](z)[..., :3]


def _mosaic(panels: list[list[np.ndarray | None]], titles: list[list[str]], title: str,
            scale: float = 1.7) -> bytes:
    """One image of equal-size RGB panels (rows x cols) with a title above each: one axes, fast."""
    h, w = next(p for row in panels for p in row if p is not None).shape[:2]
    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    pad, band = max(1, w // 16), max(4, int(h * 0.45))
    canvas = np.ones((n_rows * (h + band + pad), n_cols * (w + pad), 3))
    fig, ax = plt.subplots(figsize=(scale * n_cols, scale * 1.2 * n_rows))
    for r, row in enumerate(panels):
        for c, p in enumerate(row):
            y0, x0 = r * (h + band + pad) + band, c * (w + pad)
            if p is not None:
                canvas[y0:y0 + h, x0:x0 + w] = p
            ax.text(x0 + w / 2, y0 - 1, titles[r][c], ha="center", va="bottom", fontsize=6.5)
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    return _png(fig)


def _display(data: RunData, i: int) -> np.ndarray:
    disp = data.inputs.get("display")
    if disp is not None:
        return disp[i].astype(np.float64) / 255.0
    x = data.inputs["images"][i]
    g = (x - x.min()) / (np.ptp(x) or 1.0)
    return np.repeat(g.mean(0)[..., None], 3, axis=2)


def examples(data: RunData, comp: Computed, explainer: str, fixed: int = 2) -> bytes | None:
    """Image | teacher map | each student's map | mask, for fixed samples and the best, median and
    worst by the students' mean cosine alignment; one colour scale per row; values in titles."""
    students = data.students
    models = ([data.teacher] if data.teacher else []) + students
    if not models or not data.n:
        return None
    cos = {r.model: r.result.values.numpy() for r in comp.rows
           if r.metric == "cosine" and r.explainer == explainer and r.model in students}
    score = np.nanmean(np.stack(list(cos.values())), axis=0) if cos else np.full(data.n, np.nan)
    names = (data.index or {}).get("class_names") or []
    size = tuple(data.inputs["images"].shape[2:])
    panels, titles = [], []
    for i, tag in _pick(score, fixed):
        label = int(data.inputs["labels"][i])
        maps = [data.arrays[m][f"map_{explainer}"][i, 0] for m in models]
        vmax = max(float(np.max(m)) for m in maps) or 1.0
        row = [_display(data, i)] + [_rgb(m, CMAP, 0.0, vmax, size) for m in maps]
        tit = [f"#{int(data.inputs['indices'][i])} {tag}\ny={names[label] if label < len(names) else label}"]
        for m in models:
            t = f"{m} pred={int(np.argmax(data.arrays[m]['logits'][i]))}"
            tit.append(t + (f"\ncos={cos[m][i]:.2f}" if m in cos else ""))
        if data.has_masks:
            row.append(_rgb(data.inputs["masks"][i, 0].astype(np.float64), "gray", 0.0, 1.0, size))
            tit.append("mask")
        panels.append(row)
        titles.append(tit)
    return _mosaic(panels, titles, f"{explainer} maps (target: teacher top-1; one colour scale per "
                   "row; cos = cosine with the teacher's map)")


def attention(data: RunData, student: str, n_samples: int = 4) -> bytes | None:
    """Both ABF attention maps of every fused stage for the first samples of one student."""
    arr = data.arrays.get(student, {})
    stages = sorted(k for k in arr if k.startswith("attn_"))
    if not stages or not data.n:
        return None
    size = tuple(data.inputs["images"].shape[2:])
    panels, titles = [], []
    for i in range(min(n_samples, data.n)):
        row, tit = [_display(data, i)], [f"#{int(data.inputs['indices'][i])}"]
        for key in stages:
            pair = arr[key][i, :2]
            lo, hi = float(pair.min()), float(pair.max())
            for k in range(pair.shape[0]):
                row.append(_rgb(pair[k], "viridis", lo, hi, size))
                tit.append(f"{key[5:]} map {k}\n[{lo:.2f}, {hi:.2f}]")
        if "weight_map" in arr:
            wm = arr["weight_map"][i, 0]
            row.append(_rgb(wm, CMAP, 0.0, float(wm.max()) or 1.0, size))
            tit.append("teacher map\nweighting the loss")
        panels.append(row)
        titles.append(tit)
    return _mosaic(panels, titles, f"{student}: ABF attention per fused stage")


def sanity(comp: Computed) -> bytes | None:
    """Cascading randomisation: Spearman (and SSIM) to the original maps after each layer step."""
    rows = [r for r in comp.rows if r.metric == "model_randomisation" and r.result.curves is not None]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in rows:
        x = r.result.curve_x.numpy()
        axes[0].plot(x, np.nanmean(r.result.curves.numpy(), axis=0), marker=".",
                     label=f"{r.model} / {r.explainer}")
        ss = r.result.extras.get("ssim")
        if ss is not None:
            axes[1].plot(x, np.nanmean(ss.numpy(), axis=0), marker=".", label=f"{r.model} / {r.explainer}")
    axes[0].set(title="Spearman to the original maps (lower = passes)",
                xlabel="layers randomised (from the logits down)", ylabel="Spearman rho")
    axes[1].set(title="SSIM to the original maps", xlabel="layers randomised", ylabel="SSIM")
    for a in axes:
        a.legend(fontsize=7)
    return _png(fig)


def training(data: RunData) -> bytes | None:
    """Training loss and validation score per epoch for every model (history.jsonl)."""
    hist = {n: m.history for n, m in data.models.items() if m.history}
    if not hist:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for name, rows in hist.items():
        ep = [r.get("epoch") for r in rows]
        axes[0].plot(ep, [r.get("loss") for r in rows], marker=".", label=name)
        key = next((k for k in ("val_acc", "val_mae", "val_loss") if k in rows[-1]), None)
        if key:
            axes[1].plot(ep, [r.get(key) for r in rows], marker=".", label=f"{name} {key}")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title="validation", xlabel="epoch")
    for a in axes:
        a.legend(fontsize=7)
    return _png(fig)
