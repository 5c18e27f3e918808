"""End to end: ``python -m xkd.run experiments/ccl_av_shapes.yaml --smoke`` (one seed, tiny splits)
writes named teachers, video students with test top-1 and R@1/R@5, per-frame video explanations,
a report and a seed report with the retrieval columns; the viewer's explorer shows the frame strip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from xkd import io
from xkd.engine.retrieval import recall_at_k
from xkd.run import main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiments" / "ccl_av_shapes.yaml"
VIEWER = ROOT / "apps" / "viewer.py"
if str(VIEWER.parent) not in sys.path:
    sys.path.insert(0, str(VIEWER.parent))
STUDENTS = ["ce", "kd_image", "kd_audio", "ccl_a", "ccl_i", "ccl_ai"]


@pytest.fixture(scope="module")
def ccl_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ccl") / "runs" / "ccl"
    sizes = ["--set", "data.params.n_train=48", "--set", "data.params.n_val=16",
             "--set", "data.params.n_test=24", "--set", "evaluate.subset_size=6"]
    assert main([str(EXPERIMENT), "--smoke", "--out", str(out), "--set", "seeds=[0]", *sizes]) == 0
    return out


def test_smoke_run_writes_teachers_students_retrieval_and_video_explanations(ccl_run: Path):
    run = ccl_run / "seed-0"
    for t, modality in (("image", "image"), ("audio", "audio")):
        assert (run / "teachers" / t / "checkpoint.pt").is_file()
        m = io.read_json(run / "teachers" / t / "metrics.json")
        assert m["role"] == "teacher" and m["modality"] == modality
    summary = io.read_json(run / "summary.json")
    rows = {r["model"]: r for r in summary["rows"]}
    assert list(rows) == ["image", "audio", *STUDENTS]
    for s in STUDENTS:
        r = rows[s]
        assert r["modality"] == "video" and 0 <= r["test_acc"] <= 1
        assert 0 <= r["test_r1"] <= r["test_r5"] <= 1
        assert (run / "students" / s / "best.pt").is_file()
    assert rows["kd_audio"]["teacher"] == "audio" and "test_agreement" in rows["kd_image"]
    assert "test_agreement" not in rows["ce"] and "test_agreement" not in rows["ccl_ai"]
    hist = [json.loads(x) for x in (run / "students" / "ccl_ai" / "history.jsonl").read_text().splitlines()]
    assert {"ce", "image_ct", "image_kl", "image_head", "audio_ct", "audio_kl", "audio_head"} <= set(hist[-1]["losses"])
    # per-frame explanations of every video student on the fixed eval subset
    ex = run / "explanations"
    index = io.read_json(ex / "video_index.json")
    assert set(index["models"]) == set(STUDENTS) and index["n"] == 6
    inputs = np.load(ex / "video_inputs.npz")
    n, t = 6, index["frames"]
    size = io.read_yaml(run / "config.yaml")["data"]["params"]["image_size"]
    assert inputs["frames"].shape == (n, t, size, size, 3) and inputs["frames"].dtype == np.uint8
    z = np.load(ex / "video_ccl_ai.npz")
    assert z["spatial"].shape == (n, t, size, size) and (z["spatial"] >= 0).all()
    np.testing.assert_allclose(z["temporal"].sum(1), 1.0, atol=1e-4)
    assert not (ex / "index.json").exists()
    # report and seed report carry the retrieval columns
    assert "test R@1" in (run / "report" / "report.md").read_text()
    seeds = io.read_json(ccl_run / "report" / "seeds.json")
    assert {"test_acc", "test_r1", "test_r5"} <= set(seeds["columns"])
    assert seeds["mean_std"]["ccl_ai"]["test_r1"]["mean"] == pytest.approx(rows["ccl_ai"]["test_r1"])


def test_retrieval_numbers_recomputed_from_the_saved_student(ccl_run: Path):
    from xkd.config import DataConfig, ModelConfig
    from xkd.data import build_data
    from xkd.engine.retrieval import embed
    from xkd.models import build

    run = ccl_run / "seed-0"
    cfg = io.read_yaml(run / "config.yaml")
    data = DataConfig.model_validate(cfg["data"])
    b = build_data(data, 0)
    sub = lambda ds: torch.utils.data.Subset(ds, range(min(64, len(ds))))  # noqa: E731  (smoke: first 64)
    model = build(ModelConfig(name="r2plus1d_tiny", params={"stem_stride": 4}), num_classes=4,
                  in_channels=3, image_size=int(cfg["data"]["params"]["image_size"]))
    state = io.torch_load(run / "students" / "ccl_a" / "best.pt")["model"]
    model.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    q, ql = embed(model, sub(b.test), "cpu", 16, "video")
    g, gl = embed(model, sub(b.train), "cpu", 16, "video")
    # independent R@1: nearest neighbour by cosine with numpy
    qn = q.numpy() / np.linalg.norm(q.numpy(), axis=1, keepdims=True)
    gn = g.numpy() / np.linalg.norm(g.numpy(), axis=1, keepdims=True)
    nn1 = (qn @ gn.T).argmax(1)
    r1 = float((gl.numpy()[nn1] == ql.numpy()).mean())
    summary = io.read_json(run / "summary.json")
    row = next(r for r in summary["rows"] if r["model"] == "ccl_a")
    assert row["test_r1"] == pytest.approx(r1, abs=1e-6)
    assert recall_at_k(q, ql, g, gl)["r5"] == pytest.approx(row["test_r5"], abs=1e-6)


def test_agreement_with_the_named_teacher_recomputed_from_saved_models(ccl_run: Path):
    from xkd.config import DataConfig, ModelConfig
    from xkd.data import build_data
    from xkd.engine import predict
    from xkd.models import build

    run = ccl_run / "seed-0"
    cfg = io.read_yaml(run / "config.yaml")
    b = build_data(DataConfig.model_validate(cfg["data"]), 0)
    p = cfg["data"]["params"]
    teacher = build(ModelConfig.model_validate(cfg["teachers"]["audio"]["model"]), num_classes=4,
                    in_channels=1, image_size=int(p["n_mels"]))
    teacher.load_state_dict(io.torch_load(run / "teachers" / "audio" / "checkpoint.pt")["model"])
    student = build(ModelConfig.model_validate(cfg["students"][2]["model"]), num_classes=4,
                    in_channels=3, image_size=int(p["image_size"]))
    state = io.torch_load(run / "students" / "kd_audio" / "best.pt")["model"]
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    t = predict(teacher, b.test, "cpu", 16, input_key="audio")[0].numpy().astype(np.float64)
    s = predict(student, b.test, "cpu", 16, input_key="video")[0].numpy().astype(np.float64)
    # independent: top-1 agreement and mean KL(p_T || p_S) with numpy
    log_p = lambda z: z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))  # noqa: E731
    kl = float((np.exp(log_p(t)) * (log_p(t) - log_p(s))).sum(1).mean())
    row = next(r for r in io.read_json(run / "summary.json")["rows"] if r["model"] == "kd_audio")
    assert row["teacher"] == "audio"
    assert row["test_agreement"] == pytest.approx(float((s.argmax(1) == t.argmax(1)).mean()), abs=1e-6)
    assert row["test_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)


def test_viewer_explorer_shows_the_frame_strip(ccl_run: Path, monkeypatch):
    monkeypatch.setenv("XKD_RUNS", str(ccl_run.parent))  # the viewer's `--runs`
    at = AppTest.from_file(str(VIEWER), default_timeout=90)
    at.query_params["page"] = "explorer"
    at.query_params["run"] = "ccl/seed-0"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    caps = [img.caption for im in at.image for img in im.proto.imgs]
    ex = ccl_run / "seed-0" / "explanations"
    inputs, z = np.load(ex / "video_inputs.npz"), np.load(ex / "video_ccl_ai.npz")
    t = inputs["frames"].shape[1]
    first = int(inputs["indices"][0])
    assert caps[0].startswith(f"clip #{first} · t 1/{t}")
    for k in range(t):  # every frame of the focus model, captioned with its temporal importance
        assert f"ccl_ai · t {k + 1}/{t} · importance {float(z['temporal'][0, k]):.2f}" in caps
    for s in STUDENTS:
        assert sum(c.startswith(f"{s} · t ") for c in caps) == t
    at.multiselect(key="video_shown").set_value(["ccl_a"]).run()
    at.selectbox(key="video_sample").set_value(int(inputs["indices"][2])).run()
    assert not at.exception
    caps = [img.caption for im in at.image for img in im.proto.imgs]
    assert caps[0].startswith(f"clip #{int(inputs['indices'][2])} ")
    assert not any(c.startswith("ccl_ai · ") for c in caps) and any(c.startswith("ccl_a · ") for c in caps)
