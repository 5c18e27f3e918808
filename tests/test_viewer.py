"""The Streamlit viewer (apps/viewer.py) under ``streamlit.testing.v1.AppTest`` on every page of a
complete run made by the real pipeline (``python -m xkd.run ... --smoke``). :func:`build_runs_root`
also makes the harder folders (partial, still training, multi-seed, with report metrics, outside
the root) that test_viewer_partial.py and test_viewer_browser.py use."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from streamlit.testing.v1 import AppTest

from xkd.run import main as xkd_run

ROOT = Path(__file__).resolve().parents[1]
VIEWER = ROOT / "apps" / "viewer.py"
if str(VIEWER.parent) not in sys.path:
    sys.path.insert(0, str(VIEWER.parent))

EXPERIMENT = {
    "name": "viewer_test", "seed": 0, "device": "cpu",
    "data": {"name": "shapes", "params": {"num_classes": 4, "image_size": 32, "train_size": 64,
                                          "val_size": 32, "test_size": 32}},
    "teacher": {"model": {"name": "resnet8"}},
    "students": [
        {"name": "ce", "method": "ce", "model": {"name": "resnet8"}},
        {"name": "kd", "method": "kd", "model": {"name": "resnet8"}, "params": {"T": 4}},
        {"name": "reviewkd", "method": "reviewkd", "model": {"name": "resnet8"},
         "params": {"warmup_epochs": 0}},
        {"name": "reviewkd_sal", "method": "reviewkd", "model": {"name": "resnet8"},
         "params": {"warmup_epochs": 0, "saliency_mix": 0.8}},
    ],
    "train": {"epochs": 1, "batch_size": 16},
    "evaluate": {"subset_size": 16, "explainers": ["gradcam", "saliency"]},
    "report": {"enabled": False},
}
STUDENTS = ["ce", "kd", "reviewkd", "reviewkd_sal"]
_BUILT: dict[str, Path] = {}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.pt", "saliency"))
    return dst


def _rewrite_npz(path: Path, drop) -> None:
    with np.load(path) as z:
        arrs = {k: z[k] for k in z.files if not drop(k)}
    path.unlink()
    np.savez_compressed(path, **arrs)


def build_runs_root(factory) -> Path:
    """The runs root shared by the viewer tests (built once per session, ~20 s)."""
    if "root" in _BUILT:
        return _BUILT["root"]
    base = factory.mktemp("viewer")
    root = base / "runs"
    exp = base / "exp.yaml"
    exp.write_text(yaml.safe_dump(EXPERIMENT))
    quick = root / "quick"
    assert xkd_run([str(exp), "--smoke", "--out", str(quick)]) == 0
    # partial: a dataset without masks, a ReviewKD student without its ABF maps, a student whose
    # npz is gone, no summary.json and a status that says it is still running
    part = _copy(quick, root / "partial")
    _rewrite_npz(part / "explanations" / "inputs.npz", lambda k: k == "masks")
    _rewrite_npz(part / "explanations" / "student_reviewkd.npz", lambda k: k.startswith("attn_"))
    (part / "explanations" / "student_kd.npz").unlink()
    (part / "summary.json").unlink()
    (part / "status.json").write_text(json.dumps({"state": "running", "time": 0}))
    # a run still training: config, status, and the history of the models trained so far
    train = root / "training"
    (train / "teacher").mkdir(parents=True)
    (train / "students" / "ce").mkdir(parents=True)
    shutil.copy(quick / "config.yaml", train / "config.yaml")
    (train / "status.json").write_text(json.dumps({"state": "running", "time": 0}))
    shutil.copy(quick / "teacher" / "history.jsonl", train / "teacher" / "history.jsonl")
    shutil.copy(quick / "students" / "ce" / "history.jsonl", train / "students" / "ce" / "history.jsonl")
    # a multi-seed run: one seed folder and the aggregate summary
    from xkd.pipeline.flow import aggregate_seeds

    multi = root / "multi"
    _copy(quick, multi / "seed-0")
    one = json.loads((quick / "summary.json").read_text())
    (multi / "summary.json").write_text(json.dumps({"name": "viewer_test", "seeds": [0], "task": "classification",
                                                    "rows": aggregate_seeds([one]), "test_sets": ["test"]}))
    (multi / "status.json").write_text(json.dumps({"state": "complete"}))
    # per-sample metrics and deletion curves as xkd.report writes them
    rep = _copy(quick, root / "reported")
    idx = np.load(quick / "explanations" / "inputs.npz")["indices"]
    (rep / "metrics").mkdir()
    vals = np.linspace(-0.5, 0.9, len(idx))[::-1]
    csv = rep / "metrics" / "cosine__reviewkd_sal__gradcam.csv"
    pd.DataFrame({"index": idx, "value": vals}).to_csv(csv, index=False)
    (rep / "metrics" / "aggregates.json").write_text(json.dumps({
        "deletion": {"reviewkd_sal": {"gradcam": {"mean": 0.31, "curve_x": [0, 0.5, 1],
                                                  "curve_mean": [0.8, 0.3, 0.1]}}},
        "insertion": {"reviewkd_sal": {"gradcam": {"mean": 0.62, "curve_x": [0, 0.5, 1],
                                                   "curve_mean": [0.1, 0.6, 0.9]}}}}))
    # a run outside the root, and a link from inside the root to it
    _copy(quick, base / "outside")
    (root / "link").symlink_to(base / "outside", target_is_directory=True)
    _BUILT["root"] = root
    return root


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return build_runs_root(tmp_path_factory)


def app(root: Path, page: str, run: str | None = None) -> AppTest:
    """The viewer on ``root``, given as the command line would (``XKD_RUNS``, read on every rerun:
    AppTest runs the script in this process, whose argv is pytest's)."""
    os.environ["XKD_RUNS"] = str(root)
    at = AppTest.from_file(str(VIEWER), default_timeout=90)
    at.query_params["page"] = page
    if run is not None:
        at.query_params["run"] = run
    return at.run()


def texts(at: AppTest) -> str:
    """All visible text: markdown, captions, alerts, headers and image captions."""
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "success", "error", "header",
                                  "subheader") for e in getattr(at, kind)]
    parts += [img.caption for im in at.image for img in im.proto.imgs]
    return "\n".join(str(p) for p in parts)


def captions(at: AppTest) -> list[str]:
    return [img.caption for im in at.image for img in im.proto.imgs]


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_overview_of_a_complete_run(runs_root: Path):
    at = app(runs_root, "overview", "quick")
    ok(at)
    assert at.sidebar.radio(key="page").options == ["Overview", "Sample explorer", "Stage view"]
    runs = set(at.sidebar.selectbox(key="run").options)
    assert {"quick", "partial", "training", "multi", "multi/seed-0", "reported"} <= runs
    assert "link" not in at.sidebar.selectbox(key="run").options  # resolves outside the root
    assert at.header[0].value == "Overview · quick" and "complete" in at.success[0].value
    table = at.dataframe[0].value
    summary = json.loads((runs_root / "quick" / "summary.json").read_text())
    assert table["model"].tolist() == ["teacher", *STUDENTS]
    assert table["test_acc"].tolist() == pytest.approx([r["test_acc"] for r in summary["rows"]])
    assert table["params"].tolist() == [r["params"] for r in summary["rows"]]
    # the viewer's alignment means are the means of the per-sample cosines it computes
    from viewer_lib.alignment import cosine

    z = {n: np.load(runs_root / "quick" / "explanations" / f) for n, f in
         [("teacher", "teacher.npz"), ("reviewkd_sal", "student_reviewkd_sal.npz")]}
    want = np.nanmean(cosine(z["reviewkd_sal"]["map_gradcam"], z["teacher"]["map_gradcam"]))
    got = table.set_index("model").loc["reviewkd_sal", "cosine (gradcam)"]
    assert got == pytest.approx(want)
    assert len(at.get("vega_lite_chart")) == 3  # training curve + two alignment histograms
    assert "No deletion/insertion curves" in texts(at)
    at.selectbox(key="series").set_value("loss").run()
    ok(at)
    at.multiselect(key="compare").set_value(["multi"]).run()
    ok(at)
    both = at.dataframe[0].value
    assert set(both["run"]) == {"quick", "multi"}
    assert "± " in str(both[both["run"] == "multi"]["test_acc"].iloc[0])


def test_sample_explorer(runs_root: Path):
    at = app(runs_root, "explorer", "quick")
    ok(at)
    caps = captions(at)
    assert caps[0].startswith("image #") and "ground-truth mask" in caps
    for s in STUDENTS:
        assert any(c.startswith(s) for c in caps)
    for s in ("reviewkd", "reviewkd_sal"):  # both ABF maps of every fused stage
        index = json.loads((runs_root / "quick" / "explanations" / "index.json").read_text())
        for stage, (_, h, w) in index["models"][s]["attention"].items():
            for which in ("own", "review"):
                assert any(c.startswith(f"{s} · {stage} {which} {h}×{w}") for c in caps)
    assert at.table[0].value.index.tolist() == STUDENTS
    # the per-sample table (the CSV download) against scipy and the exported logits
    from scipy.stats import spearmanr

    from viewer_lib.arrays import sample_table
    from viewer_lib.runs import stamp

    run = runs_root / "quick"
    tab = sample_table(str(run), stamp(run), "saliency")
    z = {n: np.load(run / "explanations" / f) for n, f in
         [("t", "teacher.npz"), ("s", "student_kd.npz"), ("i", "inputs.npz")]}
    assert tab["index"].tolist() == z["i"]["indices"].tolist()
    for k in range(len(tab)):
        ref = spearmanr(z["s"]["map_saliency"][k].ravel(), z["t"]["map_saliency"][k].ravel()).statistic
        assert tab["kd:spearman"][k] == pytest.approx(ref, abs=1e-9)
    pred = z["s"]["logits"].argmax(1)
    assert (tab["kd:correct"] == (pred == z["i"]["labels"])).all()
    assert (tab["kd:agree"] == (pred == z["t"]["logits"].argmax(1))).all()
    assert {b.label for b in at.get("download_button")} == {"Per-sample metrics (CSV)", "Current panel (PNG)"}
    # one click: worst-aligned first selects the sample with the lowest cosine of the focus student
    assert at.selectbox(key="focus").value == "reviewkd_sal"
    at.button(key="worst").click().run()
    ok(at)
    ex = {n: np.load(runs_root / "quick" / "explanations" / f) for n, f in
          [("t", "teacher.npz"), ("s", "student_reviewkd_sal.npz"), ("i", "inputs.npz")]}
    from viewer_lib.alignment import cosine

    cos = cosine(ex["s"]["map_gradcam"], ex["t"]["map_gradcam"])
    idx = ex["i"]["indices"]
    assert at.selectbox(key="sample").value == int(idx[np.nanargmin(cos)])
    order = at.selectbox(key="sample").options
    assert len(order) == len(idx) and f"cosine {np.nanmin(cos):.2f}" in order[0]
    # filter: only samples the focus student gets wrong
    at.multiselect(key="filters").set_value(["incorrect only"]).run()
    ok(at)
    wrong = ex["s"]["logits"].argmax(1) != ex["i"]["labels"]
    assert len(at.selectbox(key="sample").options) == int(wrong.sum())
    # pick by index, then change the display controls
    at.multiselect(key="filters").set_value([]).run()
    target = int(idx[3])
    at.selectbox(key="sample").set_value(target).run()
    ok(at)
    assert captions(at)[0].startswith(f"image #{target} ")
    at.slider(key="opacity").set_value(0.2).run()
    at.radio(key="scale").set_value("per map").run()
    at.multiselect(key="shown").set_value(["kd"]).run()
    ok(at)
    assert at.table[0].value.index.tolist() == ["kd"]
    at.selectbox(key="explainer").set_value("saliency").run()
    ok(at)
    assert any(c.startswith("teacher · saliency · pred ") for c in captions(at))


def test_stage_view(runs_root: Path):
    at = app(runs_root, "stages", "quick")
    ok(at)
    assert at.selectbox(key="stage_student").options == ["reviewkd", "reviewkd_sal"]
    assert at.selectbox(key="stage_student").value == "reviewkd_sal"
    index = json.loads((runs_root / "quick" / "explanations" / "index.json").read_text())
    att = index["models"]["reviewkd_sal"]["attention"]
    md = [m.value for m in at.markdown]
    for stage, (_, h, w) in att.items():
        assert f"**{stage}** · {h}×{w}" in md
        assert f"teacher pooled to {h}×{w}" in captions(at)
    t = texts(at)
    assert "saliency_mix a = 0.8" in t and "weight_map" in t
    assert len(at.dataframe[0].value) == len(att)
    at.selectbox(key="stage_student").set_value("reviewkd").run()
    ok(at)
    assert "saliency_mix a = 0" in texts(at) and not any(c.startswith("weight W") for c in captions(at))
    at.radio(key="att_scale").set_value("stretched").run()
    ok(at)
    assert "their own min … max" in texts(at)
    # the sample chosen in the explorer is the one the stage view shows, and back
    at.selectbox(key="stage_sample").set_value(at.selectbox(key="stage_sample").options[5]).run()
    chosen = at.selectbox(key="stage_sample").value
    at.sidebar.radio(key="page").set_value("explorer").run()
    ok(at)
    assert at.selectbox(key="sample").value == chosen
