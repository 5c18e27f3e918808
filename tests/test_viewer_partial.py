"""The viewer under ``AppTest`` on the harder run folders: a path outside the runs root, a partial
run (no masks, a student without ABF maps, a missing npz, still running), a run still training, a
multi-seed run, a run with report metrics, and a 1,000-sample run for the loading cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_viewer import STUDENTS, app, build_runs_root, captions, ok, texts


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return build_runs_root(tmp_path_factory)


def test_outside_root_is_refused(runs_root: Path):
    at = app(runs_root, "overview")
    ok(at)
    at.sidebar.text_input(key="run_path").input("../outside").run()
    assert not at.exception
    assert "Refused" in at.error[0].value and "outside the runs folder" in at.error[0].value
    assert not at.dataframe  # nothing of the outside run is shown
    at = app(runs_root, "explorer", run=str(runs_root.parent / "outside"))
    assert not at.exception and "Refused" in at.error[0].value
    at = app(runs_root, "explorer", run="link")
    assert not at.exception and "Refused" in at.error[0].value
    at = app(runs_root, "overview")
    at.sidebar.text_input(key="run_path").input("quick").run()
    ok(at)
    assert at.header[0].value == "Overview · quick"
    at = app(runs_root / "nope", "overview")  # `--runs` naming a folder that is not there
    assert not at.exception and "does not exist" in at.warning[0].value and "--runs ROOT" in at.warning[0].value


@pytest.mark.parametrize("page", ["overview", "explorer", "stages"])
def test_partial_run_says_what_is_missing(runs_root: Path, page: str):
    at = app(runs_root, page, "partial")
    ok(at)
    t = texts(at)
    if page == "overview":
        assert "still running" in t and "summary.json" in t
        assert at.dataframe[0].value["model"].tolist() == ["teacher", *STUDENTS]  # from metrics.json
    else:
        assert "student_kd.npz is missing" in t
        assert "'reviewkd': ABF maps of stage0, stage1, stage2 are missing" in t
        assert "no ground-truth masks" in t
    if page == "explorer":
        assert "ground-truth mask" not in captions(at)
        assert not any(c.startswith("kd") for c in captions(at))
        assert "reviewkd: the ABF attention maps listed in index.json are missing" in t
    if page == "stages":
        assert at.selectbox(key="stage_student").options == ["reviewkd_sal"]


@pytest.mark.parametrize("page", ["overview", "explorer", "stages"])
def test_run_still_training(runs_root: Path, page: str):
    at = app(runs_root, page, "training")
    ok(at)
    t = texts(at)
    if page == "overview":
        assert "still running" in t and "explanations/" in t
        assert len(at.get("vega_lite_chart")) == 1  # training curves from history.jsonl
        assert "No models have finished yet" in t
    else:
        assert "No exported explanations" in t and "still training" in t


def test_multi_seed_and_report_metrics(runs_root: Path):
    at = app(runs_root, "overview", "multi")
    ok(at)
    assert "Multi-seed run" in texts(at) and "seed-0" in texts(at)
    assert "± " in str(at.dataframe[0].value["test_acc"].iloc[0])
    at = app(runs_root, "explorer", "multi")
    ok(at)
    assert "multi-seed run; open one of its seeds (seed-0)" in texts(at)
    at = app(runs_root, "explorer", "multi/seed-0")
    ok(at)
    assert any(c.startswith("reviewkd_sal · stage0 own") for c in captions(at))
    at = app(runs_root, "overview", "reported")
    ok(at)
    assert "No deletion/insertion curves" not in texts(at)
    assert len(at.get("vega_lite_chart")) == 5  # training, deletion, insertion, 2 histograms
    table = at.dataframe[0].value.set_index("model")
    assert table.loc["reviewkd_sal", "deletion (gradcam, report)"] == pytest.approx(0.31)
    at = app(runs_root, "explorer", "reported")  # report cosine replaces the viewer's for sorting
    at.button(key="worst").click().run()
    ok(at)
    idx = np.load(runs_root / "quick" / "explanations" / "inputs.npz")["indices"]
    assert at.selectbox(key="sample").value == int(idx[-1])  # the CSV gives the last sample -0.5
    assert "Alignment values: RUN/metrics (xkd.report)" in texts(at)


def _synthetic_run(path: Path, n: int = 1000, size: int = 32) -> None:
    """An explanations-only run folder of ``n`` samples in the export format (for cache timing)."""
    g = np.random.default_rng(0)
    ex = path / "explanations"
    ex.mkdir(parents=True)
    np.savez_compressed(ex / "inputs.npz", indices=np.arange(n) * 2, labels=g.integers(0, 4, n),
                        display=g.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
                        masks=(g.random((n, 1, size, size)) > 0.7).astype(np.uint8))
    models = {}
    for name in ["teacher", "a", "b"]:
        arrs = {"logits": g.normal(size=(n, 4)).astype(np.float32), "target": np.zeros(n, np.int64),
                "map_gradcam": g.random((n, 1, size, size)).astype(np.float16)}
        att = {}
        if name == "b":
            for j, s in enumerate((32, 16, 8)):
                arrs[f"attn_stage{j}"] = g.random((n, 2, s, s)).astype(np.float16)
                att[f"stage{j}"] = [2, s, s]
        f = "teacher.npz" if name == "teacher" else f"student_{name}.npz"
        np.savez_compressed(ex / f, **arrs)
        models[name] = {"file": f, "role": "teacher" if name == "teacher" else "student",
                        "maps": ["map_gradcam"], "attention": att}
    (ex / "index.json").write_text(json.dumps({"n": n, "explainers": ["gradcam"], "has_masks": True,
                                               "class_names": ["w", "x", "y", "z"], "models": models}))
    (path / "status.json").write_text(json.dumps({"state": "complete"}))


def test_switching_samples_uses_the_cache(tmp_path: Path):
    from viewer_lib import arrays

    _synthetic_run(tmp_path / "big")
    at = app(tmp_path, "explorer", "big")
    ok(at)
    loads = arrays.LOADS["npz"]
    opts = at.selectbox(key="sample").options
    assert len(opts) == 1000
    times = []
    for k in (10, 500, 999):
        t0 = time.perf_counter()
        at.selectbox(key="sample").set_value(int(k * 2)).run()
        times.append(time.perf_counter() - t0)
        ok(at)
        assert captions(at)[0].startswith(f"image #{k * 2} ")
    at.sidebar.radio(key="page").set_value("stages").run()
    ok(at)
    assert arrays.LOADS["npz"] == loads  # no npz was read again
    print(f"sample switch on 1000 samples: {', '.join(f'{t:.2f}' for t in times)} s")
