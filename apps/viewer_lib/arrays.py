"""The exported explanations (``RUN/explanations/*.npz``) and per-sample metrics (``RUN/metrics``).

Arrays are loaded once per run (``st.cache_resource``: shared, never copied, treated as read-only)
and every derived table is cached with ``st.cache_data``, so switching samples only slices arrays.
``LOADS`` counts the real npz loads (the tests check that a sample switch does not reload).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from viewer_lib import alignment as A
from viewer_lib.runs import read_json

LOADS = {"npz": 0}
ID_COLUMNS = ("index", "sample_index", "sample", "idx")


@dataclass
class Explanations:
    """Inputs and per-model arrays of the eval subset, plus notes on what is missing."""

    index: dict[str, Any]
    inputs: dict[str, np.ndarray]
    models: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(len(self.inputs.get("labels", self.inputs.get("indices", []))))

    @property
    def explainers(self) -> list[str]:
        found = list(self.index.get("explainers") or [])
        for arrs in self.models.values():
            found += [k[4:] for k in arrs if k.startswith("map_") and k[4:] not in found]
        return found

    def stages(self, model: str) -> list[str]:
        keys = [k[5:] for k in self.models.get(model, {}) if k.startswith("attn_")]
        return sorted(keys, key=lambda s: int(re.sub(r"\D", "", s) or 0))

    def map(self, model: str, explainer: str) -> np.ndarray | None:
        return self.models.get(model, {}).get(f"map_{explainer}")


def _npz(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError):  # absent, half-written or not an npz
        return None


@st.cache_resource(show_spinner="Loading explanations ...", max_entries=8)
def load_explanations(path: str, version: float) -> Explanations | None:
    """The explanations of run ``path`` (``None`` when the run has not exported them)."""
    ex = Path(path) / "explanations"
    index = read_json(ex / "index.json")
    if index is None:
        return None
    LOADS["npz"] += 1
    inputs = _npz(ex / "inputs.npz")
    out = Explanations(index=index, inputs=inputs or {})
    if inputs is None:
        out.notes.append("explanations/inputs.npz is missing or unreadable: no images or labels")
    elif "masks" not in inputs:
        out.notes.append("no ground-truth masks (the dataset has none): localisation views are off")
    for name, entry in (index.get("models") or {}).items():
        arrs = _npz(ex / str(entry.get("file", f"student_{name}.npz")))
        if arrs is None:
            out.notes.append(f"{entry.get('file')} is missing or unreadable: '{name}' has no maps")
            continue
        out.models[name] = arrs
        want = set((entry.get("attention") or {}).keys())
        have = {k[5:] for k in arrs if k.startswith("attn_")}
        if want - have:
            out.notes.append(f"'{name}': ABF maps of {', '.join(sorted(want - have))} are missing")
    return out


def predictions(arrs: dict[str, np.ndarray]) -> np.ndarray | None:
    """Predicted classes (arg-max of the logits), or regression predictions in original units."""
    if arrs.get("prediction") is not None:
        return arrs["prediction"]
    lg = arrs.get("logits")
    return None if lg is None or lg.ndim != 2 else lg.argmax(axis=1)


@st.cache_data(show_spinner=False, max_entries=32)
def metric_files(path: str, version: float) -> pd.DataFrame:
    """Per-sample values from ``RUN/metrics/<metric>__<model>[__<explainer>].csv`` as a long table
    (metric, model, explainer, index, value); ``index`` is the dataset index of the sample."""
    rows = []
    for f in sorted((Path(path) / "metrics").glob("*.csv")):
        parts = f.stem.split("__")
        if len(parts) not in (2, 3):
            continue
        try:
            df = pd.read_csv(f)
        except (OSError, ValueError, pd.errors.ParserError):
            continue
        idc = next((c for c in df.columns if str(c).lower() in ID_COLUMNS), None)
        vc = next((c for c in df.columns if str(c).lower() in ("value", parts[0].lower())), None)
        if vc is None:
            num = [c for c in df.select_dtypes("number").columns if c != idc]
            vc = num[0] if num else None
        if idc is None or vc is None:
            continue
        rows.append(pd.DataFrame({"metric": parts[0], "model": parts[1],
                                  "explainer": parts[2] if len(parts) == 3 else "",
                                  "index": pd.to_numeric(df[idc], errors="coerce"),
                                  "value": pd.to_numeric(df[vc], errors="coerce")}))
    if not rows:
        return pd.DataFrame(columns=["metric", "model", "explainer", "index", "value"])
    return pd.concat(rows, ignore_index=True).dropna(subset=["index"])


def aggregates(path: str) -> dict[str, Any] | None:
    return read_json(Path(path) / "metrics" / "aggregates.json")


def curves(agg: dict[str, Any] | None, names: tuple[str, ...] = ("deletion", "insertion")) -> pd.DataFrame:
    """Mean curves found anywhere in ``aggregates.json``: objects with ``curve_x`` and ``curve``
    (or ``curve_mean``), under a key path that names the metric (deletion/insertion), the model
    and the explainer (or carrying ``metric``/``model``/``explainer`` fields)."""
    rows: list[dict[str, Any]] = []

    def walk(obj: Any, trail: list[str]) -> None:
        if isinstance(obj, dict):
            y = obj.get("curve_mean", obj.get("curve"))
            x = obj.get("curve_x")
            if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
                metric = str(obj.get("metric") or next((t for t in trail if t in names), ""))
                if metric in names:
                    label = str(obj.get("model") or (trail[-2] if len(trail) >= 2 else "?"))
                    expl = str(obj.get("explainer") or (trail[-1] if trail else ""))
                    rows.extend({"metric": metric, "model": label, "explainer": expl,
                                 "fraction": float(a), "score": float(b)} for a, b in zip(x, y)
                                if b is not None)
            for k, v in obj.items():
                walk(v, trail + [str(k)])
        elif isinstance(obj, list):
            for v in obj:
                walk(v, trail)

    walk(agg or {}, [])
    return pd.DataFrame(rows, columns=["metric", "model", "explainer", "fraction", "score"])


REGRESSION_COLUMNS = {"correct": "abs_error", "agree": "teacher_gap"}
"""The regression counterpart of each classification column: an exact match of two float
predictions means nothing, their absolute difference does."""


def _score(cols: dict[str, Any], name: str, kind: str, pred: np.ndarray, ref: np.ndarray,
           regression: bool) -> None:
    """``name:correct``/``name:agree`` (equal classes), or for regression the absolute difference
    in original units as ``name:abs_error``/``name:teacher_gap``."""
    if regression:
        cols[f"{name}:{REGRESSION_COLUMNS[kind]}"] = np.abs(np.asarray(pred, dtype=np.float64)
                                                            - np.asarray(ref, dtype=np.float64))
    else:
        cols[f"{name}:{kind}"] = pred == ref


@st.cache_data(show_spinner=False, max_entries=32)
def sample_table(path: str, version: float, explainer: str) -> pd.DataFrame:
    """One row per eval sample: labels, predictions, correctness (``model:correct``) and
    agreement with the teacher (``student:agree``), or for a regression run the absolute errors
    ``model:abs_error`` = |prediction - label| and ``student:teacher_gap`` = |prediction -
    teacher prediction| (original units), and the alignment of each student's ``explainer`` map
    with the teacher's (``student:metric``).

    Alignment comes from ``RUN/metrics`` when the report wrote it, else it is computed here.
    The columns are gathered in a dict and made into one frame at the end (a run with many metric
    files has over 100 columns; inserting them one by one fragments the frame).
    """
    ex = load_explanations(path, version)
    if ex is None or not ex.inputs:
        return pd.DataFrame()
    n = ex.n
    idx = ex.inputs.get("indices", np.arange(n))
    labels = ex.inputs.get("labels")
    names = list(ex.index.get("class_names") or [])
    cols: dict[str, Any] = {"position": np.arange(n), "index": idx}  # the columns, in order
    if labels is not None:
        cols["label"] = labels
        if names:
            cols["label_name"] = [names[int(c)] if 0 <= int(c) < len(names) else str(c) for c in labels]
    teacher = ex.models.get("teacher", {})
    tpred, tmap = predictions(teacher), teacher.get(f"map_{explainer}")
    masks = ex.inputs.get("masks")
    regression = ex.index.get("task") == "regression"
    if tpred is not None:
        cols["teacher:pred"] = tpred
        if labels is not None:
            _score(cols, "teacher", "correct", tpred, labels, regression)
    if tmap is not None and masks is not None:
        cols["teacher:energy_in_mask"] = A.energy_in_mask(tmap, masks)
    for name, arrs in ex.models.items():
        if name == "teacher":
            continue
        pred, smap = predictions(arrs), arrs.get(f"map_{explainer}")
        if pred is not None:
            cols[f"{name}:pred"] = pred
            if labels is not None:
                _score(cols, name, "correct", pred, labels, regression)
            if tpred is not None:
                _score(cols, name, "agree", pred, tpred, regression)
        if smap is not None and tmap is not None:
            cols[f"{name}:cosine"] = A.cosine(smap, tmap)
            cols[f"{name}:spearman"] = A.spearman(smap, tmap)
        if smap is not None and masks is not None:
            cols[f"{name}:energy_in_mask"] = A.energy_in_mask(smap, masks)
    source = "computed by the viewer from the exported maps"
    mf = metric_files(path, version)
    mf = mf[(mf["explainer"] == explainer) | (mf["explainer"] == "")]
    if len(mf):
        pos = pd.Series(np.arange(n), index=idx)
        for (metric, model), g in mf.groupby(["metric", "model"]):
            g = g[g["index"].isin(pos.index)]
            col = np.full(n, np.nan)
            col[pos[g["index"].astype(idx.dtype)].to_numpy()] = g["value"].to_numpy()
            cols[f"{model}:{metric}"] = col
        source = "RUN/metrics (xkd.report), others computed by the viewer"
    table = pd.DataFrame(cols)
    table.attrs["alignment_source"] = source
    return table
