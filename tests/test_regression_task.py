"""Regression as a first-class task: label normalisation round trip, MAE/RMSE in original units,
classification-only methods refused with one line, a regression --smoke run end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.test_distill_toy import TinyNet
from xkd.config import DataConfig
from xkd.data import build_data
from xkd.data.label_scaling import NormalisedLabels, to_normalised, to_original, training_split
from xkd.distill import METHODS, DistillContext, build_distiller
from xkd.engine import evaluate_predictions
from xkd.errors import UserError
from xkd.run import main

SMALL = {"image_size": 16, "train_size": 40, "val_size": 8, "test_size": 8}


def test_count_labels_normalise_to_unit_range_and_back():
    b = build_data(DataConfig(name="shapes_count", params={**SMALL, "min_count": 1, "max_count": 5}), 0)
    assert (b.label_offset, b.label_scale) == (1.0, 4.0)
    raw = b.train.labels
    norm = torch.stack([training_split(b.train, b)[i]["label"] for i in range(len(b.train))])
    # hand example: count 1 -> 0, 3 -> 0.5, 5 -> 1
    assert torch.allclose(norm, (raw - 1) / 4)
    assert torch.allclose(to_normalised(torch.tensor([1.0, 3.0, 5.0]), b), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(to_original(norm, b), raw)
    assert float(norm.min()) >= 0 and float(norm.max()) <= 1


def test_angle_range_is_plus_minus_max_angle():
    b = build_data(DataConfig(name="shapes_angle", params={**SMALL, "max_angle": 45}), 0)
    assert b.label_offset == pytest.approx(-math.pi / 4) and b.label_scale == pytest.approx(math.pi / 2)
    ds = NormalisedLabels(b.train, b)
    lab = torch.stack([ds[i]["label"] for i in range(len(ds))])
    assert float(lab.min()) >= 0 and float(lab.max()) <= 1
    # classification bundles pass through untouched
    c = build_data(DataConfig(name="shapes", params={**SMALL, "num_classes": 3}), 0)
    assert training_split(c.train, c) is c.train


def test_mae_rmse_in_original_units_by_hand():
    b = build_data(DataConfig(name="shapes_count", params={**SMALL, "min_count": 1, "max_count": 5}), 0)
    pred_norm = torch.tensor([[0.0], [0.5], [0.25]])  # -> 1, 3, 2 objects
    labels = torch.tensor([1.0, 4.0, 4.0])  # errors 0, 1, 2
    m = evaluate_predictions(to_original(pred_norm, b), labels, "regression")
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert m["loss"] == pytest.approx(5 / 3)


@pytest.mark.parametrize("method", ["kd", "hkd", "ffsd", "introspective", "e2kd"])
def test_classification_only_methods_declare_and_refuse(method: str):
    assert METHODS.entry(method).meta["tasks"] == ("classification",)
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=1, task="regression",
                         extras={"path": "students[1]"})
    with pytest.raises(UserError) as e:
        build_distiller(method, TinyNet(num_classes=1), TinyNet(num_classes=1), {}, ctx)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("students[1].method:") and "regression" in msg


def _regression_exp(tmp: Path, method: str = "ce") -> Path:
    exp = {"name": "reg", "device": "cpu",
           "data": {"name": "shapes_angle", "params": SMALL},
           "teacher": {"model": {"name": "resnet8"}},
           "students": [{"name": "s", "method": method, "model": {"name": "resnet8"}}],
           "train": {"epochs": 1, "batch_size": 8, "optimizer": {"lr": 0.01}},
           "evaluate": {"subset_size": 4, "explainers": ["gradcam"]},
           "output": {"root": str(tmp / "runs")}}
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    return path


def test_regression_dataset_with_kd_is_exit_2_before_any_folder(tmp_path: Path, capsys):
    path = _regression_exp(tmp_path, "kd")
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "students[0].method" in err[0] and "'kd'" in err[0]
    assert not (tmp_path / "run").exists()


def test_regression_smoke_run_reports_mae_rmse_in_original_units(tmp_path: Path):
    path = _regression_exp(tmp_path)
    out = tmp_path / "run"
    assert main([str(path), "--smoke", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "regression"
    rows = {r["model"]: r for r in summary["rows"]}
    for name in ("teacher", "s"):
        assert rows[name]["test_rmse"] >= rows[name]["test_mae"] > 0
    # an untrained-ish model is off by a fraction of the +-60 degree range, in radians
    assert rows["s"]["test_mae"] < 2 * math.radians(60) + 1.0
    # explanations are exported for the output itself, predictions in original units
    index = json.loads((out / "explanations" / "index.json").read_text())
    assert index["task"] == "regression" and index["target_rule"] == "output"
    arrs = np.load(out / "explanations" / "student_s.npz")
    assert (arrs["target"] == 0).all() and arrs["map_gradcam"].shape[1:] == (1, 16, 16)
    b = build_data(DataConfig(name="shapes_angle", params=SMALL), 0)
    assert np.allclose(arrs["prediction"], arrs["logits"][:, 0] * b.label_scale + b.label_offset, atol=1e-5)
    # the report's prediction table has MAE and RMSE (original units) per model
    md = (out / "report" / "report.md").read_text()
    assert "test mae ↓ | test rmse ↓" in md
    line = next(x for x in md.splitlines() if x.startswith("| s |"))
    assert f"{rows['s']['test_rmse']:.3f}" in line and f"{rows['s']['test_mae']:.3f}" in line


def test_regression_run_checks_its_explainers_before_any_folder(tmp_path: Path, capsys):
    path = _regression_exp(tmp_path)
    assert main([str(path), "--out", str(tmp_path / "run"), "--set", "explain.params.layer=layer9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: explain") and "layer9" in err[0]
    assert not (tmp_path / "run").exists()
