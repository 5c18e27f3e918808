"""The viewer's runs root is fixed by the command line (``--runs`` / ``XKD_RUNS``): no widget on any
page can change it, and whatever is typed into the page, no run outside it opens. And the overview
of a run with many per-sample metric files renders without a pandas ``PerformanceWarning``."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.errors import PerformanceWarning

from tests.test_viewer import STUDENTS, app, build_runs_root, ok, texts

PAGES = ("overview", "explorer", "stages")
FREE_TEXT = ("text_input", "text_area", "chat_input")  # the only widgets that accept a typed path


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return build_runs_root(tmp_path_factory)


def _widgets(at) -> list:
    kinds = ("text_input", "text_area", "chat_input", "number_input", "selectbox", "multiselect", "radio",
             "select_slider", "slider", "checkbox", "toggle", "button", "date_input", "time_input")
    return [w for k in kinds for w in getattr(at, k)]


@pytest.mark.parametrize("page", PAGES)
def test_runs_root_is_fixed_by_the_command_line(runs_root: Path, page: str):
    outside = runs_root.parent / "outside"
    at = app(runs_root, page, "quick")
    ok(at)
    assert f"Runs root: `{runs_root.resolve()}`" in texts(at)  # shown, read-only
    keys = {w.key for w in _widgets(at)}
    labels = {str(getattr(w, "label", "")).lower() for w in _widgets(at)}
    assert "runs_root" not in keys and not any("root" in lb for lb in labels), (keys, labels)
    runs = at.sidebar.selectbox(key="run").options
    # every free-text widget, given the filesystem root or the outside run, changes no root and
    # opens nothing outside it
    free = [(kind, w.key) for kind in FREE_TEXT for w in getattr(at, kind)]
    assert free == [("text_input", "run_path")]
    for kind, key in free:
        for typed in ("/", str(runs_root.parent), str(outside), "../outside", "~"):
            getattr(at, kind)(key=key).input(typed).run()
            assert not at.exception, [e.value for e in at.exception]
            t = texts(at)
            assert f"Runs root: `{runs_root.resolve()}`" in t
            assert "Overview · outside" not in t and "outside" not in [h.value for h in at.header]
            assert any("Refused" in e.value for e in at.error), (typed, t[:500])
        getattr(at, kind)(key=key).input("").run()
        ok(at)
        assert at.sidebar.selectbox(key="run").options == runs


def test_root_comes_from_runs_then_env_then_default(monkeypatch):
    from viewer_lib.context import cli_runs_root

    monkeypatch.setenv("XKD_RUNS", "/env/runs")
    assert cli_runs_root(["--runs", "cli/runs", "--other", "x"]) == "cli/runs"
    assert cli_runs_root(["--runs=cli/runs"]) == "cli/runs"
    assert cli_runs_root([]) == "/env/runs"
    monkeypatch.delenv("XKD_RUNS")
    assert cli_runs_root([]) == "runs"


def test_session_state_cannot_move_the_root(runs_root: Path):
    """The old ``runs_root`` session key is not read: only the command line sets the root."""
    at = app(runs_root, "overview", "quick")
    at.session_state["runs_root"] = "/"
    at.run()
    ok(at)
    assert f"Runs root: `{runs_root.resolve()}`" in texts(at)
    assert at.header[0].value == "Overview · quick"


METRICS = ("deletion", "insertion", "aopc", "road", "infidelity", "pointing_game", "energy_pointing_game",
           "kendall_tau", "ssim", "iou", "top_k_intersection", "sensitivity_max", "sparseness", "complexity",
           "relevance_mass", "relevance_rank", "faithfulness_corr", "monotonicity", "pixel_flipping",
           "selectivity")


def test_overview_emits_no_performance_warning(runs_root: Path, tmp_path: Path):
    """A run with per-sample CSVs for 20 metrics x 5 models (as xkd.report writes them): the
    sample table has over 100 columns, which pandas warns about when they are inserted one by one."""
    import streamlit as st

    root = tmp_path / "runs"
    run = root / "many"
    shutil.copytree(runs_root / "quick", run, ignore=shutil.ignore_patterns("*.pt", "saliency"))
    idx = np.load(run / "explanations" / "inputs.npz")["indices"]
    (run / "metrics").mkdir(exist_ok=True)
    for m in METRICS:
        for model in ["teacher", *STUDENTS]:
            pd.DataFrame({"index": idx, "value": np.linspace(0, 1, len(idx))}).to_csv(
                run / "metrics" / f"{m}__{model}__gradcam.csv", index=False)
    st.cache_data.clear()  # the table must be built in this test, not come from another's cache
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        at = app(root, "overview", "many")
        at.sidebar.radio(key="page").set_value("explorer").run()
    ok(at)
    perf = [str(w.message)[:120] for w in caught if issubclass(w.category, PerformanceWarning)]
    assert perf == [], f"{len(perf)} PerformanceWarnings, e.g. {perf[:2]}"
    assert at.selectbox(key="sample").options  # the explorer used the same table
