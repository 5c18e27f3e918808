"""Frame strip of a multi-modal run (issue 7): per sample of the eval subset, the clip's frames and,
per video model, its per-frame saliency over each frame (one colour scale per model and clip)
captioned with the frame's temporal importance (``explanations/video_*.npz``, xkd.pipeline.export_video)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from viewer_lib import figures as F
from viewer_lib.runs import read_json


def load_video_explanations(path: str | Path) -> dict[str, Any] | None:
    """``{"index", "inputs", "models": {name: arrays}, "notes"}`` or None when not exported."""
    ex = Path(path) / "explanations"
    index = read_json(ex / "video_index.json")
    if index is None:
        return None
    out: dict[str, Any] = {"index": index, "inputs": _npz(ex / "video_inputs.npz") or {}, "models": {},
                           "notes": []}
    if not out["inputs"]:
        out["notes"].append("explanations/video_inputs.npz is missing or unreadable: no frames")
    for name, entry in (index.get("models") or {}).items():
        arrs = _npz(ex / str(entry.get("file", f"video_{name}.npz")))
        if arrs is None:
            out["notes"].append(f"{entry.get('file')} is missing or unreadable: '{name}' has no maps")
            continue
        out["models"][name] = arrs
    return out


def _npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None


def frame_strip(frames: np.ndarray, spatial: np.ndarray, temporal: np.ndarray, name: str,
                alpha: float = 0.6) -> list[tuple[np.ndarray, str]]:
    """One overlay tile per frame: ``frames`` (T,H,W,3) uint8, ``spatial`` (T,H,W) on one scale
    [0, max over the clip], caption ``NAME · t k/T · importance v`` (``temporal`` (T,))."""
    s = spatial.astype(np.float64)
    hi = float(np.nanmax(s)) if s.size and np.nanmax(s) > 0 else 1.0
    t = len(frames)
    return [(F.overlay(frames[k], s[k], 0.0, hi, alpha), f"{name} · t {k + 1}/{t} · importance {float(temporal[k]):.2f}")
            for k in range(t)]


def render_video(path: Path, run_name: str) -> bool:
    """Draw the frame strips of run ``path``; False when it has no video explanations."""
    vx = load_video_explanations(path)
    if vx is None:
        return False
    st.header("Sample explorer: video clips")
    for note in vx["notes"]:
        st.warning(note)
    inputs, index = vx["inputs"], vx["index"]
    if "frames" not in inputs or not vx["models"]:
        st.info("No frames or no video model explanations exported in this run.")
        return True
    idx = [int(i) for i in inputs["indices"]]
    names = index.get("class_names") or []
    label = (lambda c: names[c] if 0 <= c < len(names) else str(c))  # noqa: E731
    labels = inputs["labels"]
    models = list(vx["models"])
    st.session_state.setdefault("video_shown", models)
    c1, c2, c3 = st.columns([3, 3, 2])
    i = c1.selectbox("Clip", idx, key="video_sample",
                     format_func=lambda j: f"#{j} · {label(int(labels[idx.index(j)]))}")
    shown = c2.multiselect("Models", models, key="video_shown")
    alpha = c3.slider("Overlay opacity", 0.0, 1.0, 0.6, step=0.05, key="video_opacity")
    pos = idx.index(int(i))
    frames = inputs["frames"][pos]
    st.caption(f"{index.get('method', 'saliency')} maps of the label class, per frame on one scale "
               "per model and clip; importance = the frame's share of the clip's total saliency.")
    rows = [[(F.image_tile(f), f"clip #{i} · t {k + 1}/{len(frames)} · {label(int(labels[pos]))}")
             for k, f in enumerate(frames)]]
    F.show(rows[0])
    for m in shown:
        a = vx["models"][m]
        pred = int(a["logits"][pos].argmax())
        st.markdown(f"**{m}** · predicts {label(pred)} ({'correct' if pred == int(labels[pos]) else 'wrong'})")
        tiles = frame_strip(frames, a["spatial"][pos], a["temporal"][pos], m, alpha)
        F.show(tiles)
        rows.append(tiles)
    if "audio" in inputs:
        has = "audio_mask" not in inputs or float(inputs["audio_mask"][pos]) > 0
        st.caption("log-mel spectrogram of the clip's sound" if has else "this clip has no audio")
        if has:
            spec = inputs["audio"][pos].astype(np.float64)
            F.show([(F.heat(spec[::-1], float(spec.min()), float(spec.max()), cmap="viridis"), "audio (mel × time)")])
    F.download("Current strips (PNG)", lambda: F.compose_png(rows, f"{run_name} · clip #{i}"),
               f"{run_name}_clip{i}.png", "image/png", "dl_video_png")
    return True
