"""The viewer's numpy helpers against independent references (scipy, torch, xkd's own weighting)
and its readers of run-folder files (runs, metrics CSVs, aggregates curves, the PNG panel)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import spearmanr

APPS = Path(__file__).resolve().parents[1] / "apps"
if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

from viewer_lib import alignment as A  # noqa: E402
from viewer_lib import figures as FIG  # noqa: E402
from viewer_lib.arrays import curves, metric_files  # noqa: E402
from viewer_lib.runs import discover_runs, history_frame, load_run, read_jsonl  # noqa: E402


def test_cosine_and_spearman_match_references():
    g = np.random.default_rng(0)
    a = g.random((6, 1, 5, 7))
    b = a * 0.3 + g.random((6, 1, 5, 7))
    b[2] = np.round(b[2] * 3)  # ties: scipy averages tied ranks, so must we
    cos = A.cosine(a, b)
    sp = A.spearman(a, b)
    for i in range(6):
        x, y = a[i].ravel(), b[i].ravel()
        assert cos[i] == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), rel=1e-12)
        assert sp[i] == pytest.approx(spearmanr(x, y).statistic, rel=1e-10)
    assert A.cosine(a, -a) == pytest.approx(np.full(6, -1.0))
    z = np.zeros_like(a[:1])
    assert np.isnan(A.cosine(z, a[:1])[0]) and np.isnan(A.spearman(z, a[:1])[0])


def test_energy_in_mask_by_hand():
    m = np.array([[[[1.0, 3.0], [0.0, -2.0]]]])  # negative values do not count
    mask = np.array([[[[0, 1], [1, 1]]]])
    assert A.energy_in_mask(m, mask)[0] == pytest.approx(3.0 / 4.0)
    assert np.isnan(A.energy_in_mask(np.zeros_like(m), mask)[0])


@pytest.mark.parametrize("size_in,size_out", [((8, 8), (4, 2)), ((7, 5), (3, 2)), ((32, 32), (8, 8)),
                                              ((5, 9), (5, 4))])
def test_adaptive_pool_matches_torch(size_in, size_out):
    x = torch.rand(3, 1, *size_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ref = F.adaptive_avg_pool2d(x, size_out).numpy()
    np.testing.assert_allclose(A.adaptive_avg_pool(x.numpy(), size_out), ref, rtol=1e-12)


def test_resize_and_level_weights_match_xkd():
    from xkd.distill.reviewkd.weights import level_weights, resize_map

    x = torch.rand(1, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for size in [(12, 12), (6, 6), (5, 3), (16, 20)]:
        np.testing.assert_allclose(A.resize_map(x[0, 0].numpy(), size), resize_map(x, size)[0, 0].numpy(),
                                   rtol=1e-10, atol=1e-12)
        for mix in (0.0, 0.8):
            ref = level_weights(x, size, mix)[0, 0].numpy()
            got = A.level_weights(x[0, 0].numpy(), size, mix)
            np.testing.assert_allclose(got, ref, rtol=1e-5)  # xkd works in float32
    gated = A.level_weights(x[0, 0].numpy(), (4, 4), 0.8, uniform=True)
    np.testing.assert_allclose(gated, np.ones((4, 4)))
    np.testing.assert_allclose(A.level_weights(np.zeros((8, 8)), (4, 4), 0.5), np.ones((4, 4)))


def test_metric_files_and_curves(tmp_path: Path):
    m = tmp_path / "metrics"
    m.mkdir()
    pd.DataFrame({"index": [10, 3, 7], "value": [0.5, 0.25, np.nan]}).to_csv(
        m / "cosine__kd__gradcam.csv", index=False)
    pd.DataFrame({"sample": [3], "agreement": [1.0]}).to_csv(m / "agreement__kd.csv", index=False)
    (m / "notes.csv").write_text("a,b\n1,2\n")  # not <metric>__<model>[__<explainer>]: ignored
    df = metric_files(str(tmp_path), 0.0)
    assert sorted(df["metric"].unique()) == ["agreement", "cosine"]
    cos = df[df["metric"] == "cosine"].set_index("index")["value"]
    assert cos[10] == 0.5 and cos[3] == 0.25 and np.isnan(cos[7])
    assert df[df["metric"] == "agreement"]["explainer"].tolist() == [""]
    agg = {"deletion": {"kd": {"gradcam": {"mean": 0.2, "curve_x": [0, 0.5, 1], "curve_mean": [0.9, 0.4, 0.1]}}},
           "insertion": [{"metric": "insertion", "model": "ce", "explainer": "saliency",
                          "curve_x": [0, 1], "curve": [0.1, 0.8]}],
           "cosine": {"kd": {"gradcam": {"mean": 0.5}}}}
    c = curves(agg)
    assert len(c) == 5
    d = c[c["metric"] == "deletion"]
    assert d["model"].unique().tolist() == ["kd"] and d["explainer"].unique().tolist() == ["gradcam"]
    assert d["score"].tolist() == [0.9, 0.4, 0.1]
    assert c[c["metric"] == "insertion"]["model"].unique().tolist() == ["ce"]


def test_discover_runs_and_partial_reads(tmp_path: Path):
    (tmp_path / "a" / "explanations").mkdir(parents=True)
    (tmp_path / "multi" / "seed-0").mkdir(parents=True)
    (tmp_path / "multi" / "summary.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "multi" / "seed-0" / "status.json").write_text(json.dumps({"state": "running"}))
    (tmp_path / "not_a_run").mkdir()
    assert sorted(discover_runs(tmp_path)) == ["a", "multi", "multi/seed-0"]
    assert discover_runs(tmp_path / "missing") == []
    h = tmp_path / "multi" / "seed-0" / "students" / "s" / "history.jsonl"
    h.parent.mkdir(parents=True)
    h.write_text('{"epoch": 1, "loss": 2.0, "losses": {"ce": 2.0}}\n{"epoch": 2, "lo')  # torn last line
    assert read_jsonl(h) == [{"epoch": 1, "loss": 2.0, "losses": {"ce": 2.0}}]
    run = load_run(str(tmp_path / "multi" / "seed-0"), 1.0)
    assert run["state"] == "running" and run["summary"] is None
    assert any("summary.json" in m for m in run["missing"])
    assert any("explanations/" in m for m in run["missing"])
    hf = history_frame(run)
    assert set(hf["series"]) == {"loss", "loss.ce"} and hf["value"].tolist() == [2.0, 2.0]


def test_compose_png_and_tiles():
    img = (np.arange(32 * 32 * 3) % 255).astype(np.uint8).reshape(32, 32, 3)
    m = np.linspace(0, 1, 64).reshape(8, 8)
    t = FIG.overlay(img, m, 0.0, 1.0, 0.5, px=96)
    assert t.shape == (96, 96, 3) and t.dtype == np.uint8
    h = FIG.heat(m, 0.0, 1.0, px=64)  # nearest enlargement keeps the 8x8 grid: 8-pixel blocks
    assert h.shape == (64, 64, 3) and (h[:8, :8] == h[0, 0]).all()
    np.testing.assert_array_equal(FIG.colourise(np.array([[0.0, 1.0]]), 0, 1)[0], FIG.lut()[[0, 255]])
    png = FIG.compose_png([[(t, "a"), (t, "b\nc")], [(h, "d")]], "title")
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.size[0] >= 2 * 96 and im.size[1] >= 96 + 64


def test_regression_sample_table_shows_absolute_errors_not_exact_matches(tmp_path: Path):
    from viewer_lib.arrays import sample_table
    from viewer_lib.page_explorer import Explanations, _num, option_labels, orders_and_filters, ordered

    ex = tmp_path / "explanations"
    ex.mkdir()
    labels = np.array([0.5, -0.2, 1.0, 0.3], dtype=np.float32)
    preds = {"teacher": np.array([0.4, -0.2, 0.7, 0.35], np.float32),
             "s": np.array([0.45, 0.1, 1.05, 0.3], np.float32)}
    np.savez(ex / "inputs.npz", labels=labels, indices=np.array([7, 2, 9, 4]))
    for name, p in preds.items():
        np.savez(ex / f"{name}.npz", prediction=p, logits=p[:, None] - 0.1)
    (ex / "index.json").write_text(json.dumps({"task": "regression", "models": {
        "teacher": {"file": "teacher.npz"}, "s": {"file": "s.npz"}}}))
    tab = sample_table(str(tmp_path), 0.0, "gradcam")
    s, t = preds["s"].astype(np.float64), preds["teacher"].astype(np.float64)
    assert np.allclose(tab["s:abs_error"], np.abs(s - labels.astype(np.float64)))
    assert np.allclose(tab["teacher:abs_error"], [0.1, 0.0, 0.3, 0.05], atol=1e-6)
    assert np.allclose(tab["s:teacher_gap"], np.abs(s - t))
    assert not any(c.endswith((":correct", ":agree")) for c in tab.columns)
    # largest error first: |err| = .05, .3, .05, 0 -> indices 2, then 7 and 9 (stable), then 4
    assert ordered(tab, "s", "cosine", "largest error first", []) == [2, 7, 9, 4]
    assert ordered(tab, "s", "cosine", "largest gap to the teacher first", [])[:2] == [9, 2]
    e = Explanations(index={"task": "regression"}, inputs={})
    assert orders_and_filters(e)[1] == [] and "largest error first" in orders_and_filters(e)[0]
    assert _num(e, "pred", 1.05) == "1.05"  # not truncated to a class id
    opts = option_labels(str(tmp_path), 0.0, "gradcam", "s", "cosine")
    assert opts[2] == "#2 · y -0.2 · |err| 0.3"
