"""Degenerate teacher saliency (all-zero or constant maps, e.g. Grad-CAM of a 1x1 stage) makes the
weighted ReviewKD plain ReviewKD: counted in the training logs, warned about once per student at
the end of an epoch where most maps are degenerate, and flagged by preflight (--check) when the
explainer's native map is 1x1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_experiment
from tests.test_distill_toy import TinyNet
from xkd.distill import DistillContext, build_distiller
from xkd.distill.reviewkd.weights import SaliencyWeighting, degenerate
from xkd.run import main as run_main


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def _maps() -> torch.Tensor:
    """Sample 0 all zero, 1 constant, 2 and 3 peaked (3 will be gated: the teacher is wrong)."""
    m = torch.zeros(4, 1, 8, 8)
    m[1] = 0.3
    m[1, 0, :, :2] = 0.0  # constant after a zero-padded crop
    m[2, 0, 1, 2] = 1.0
    m[3, 0, 5, 5] = 1.0
    return m


def test_degenerate_flags_maps_without_location():
    m = torch.rand(8, 1, 6, 6) + 0.1
    m[0] = 0.0
    m[1] = 7.5
    m[2, 0, 0, 0] = float("nan")
    m[3] = 1e-3
    m[3, 0, 2, 2] = 2e-3  # tiny but spatially informative
    m[5] = 0.0
    m[5, 0, 1:6, 0:5] = 0.4  # a constant map after a zero-padded random crop (25 of 36 pixels)
    m[6] = 0.0
    m[6, 0, 1:6, 0:5] = 0.4
    m[6, 0, 2, 2] = 0.5  # two levels inside: informative
    m[7] = 0.0
    m[7, 0, 0:2, 0:2] = 1.0  # one constant block on a ninth of the map: says where
    assert degenerate(m).tolist() == [True, True, True, False, False, True, False, False]


def test_uniform_frac_counts_every_sample_whose_weights_are_uniform():
    w = SaliencyWeighting(mix=0.7, shuffle=False, gate_wrong=True, gate_diffuse=None, levels="input",
                          target_rule="teacher_top1", task="classification")
    batch = {"image": torch.zeros(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 0]), "saliency": _maps()}
    logits = torch.eye(3)[[0, 1, 2, 1]] * 5  # sample 3: the teacher predicts 1, the label is 0
    weights, diag = w.weights(batch, logits, [(8, 8), (4, 4)])
    for level in weights:  # zero map, constant map, gated sample: uniform; sample 2: not
        for i in (0, 1, 3):
            assert torch.equal(level[i], torch.ones_like(level[i]))
        assert not torch.allclose(level[2], torch.ones_like(level[2]))
    assert diag["sal_uniform_frac"].item() == pytest.approx(3 / 4)  # was 1/4: gated ones only
    assert diag["sal_degenerate_frac"].item() == pytest.approx(2 / 4)
    _, diag1 = w.weights(batch, logits, [(4, 4), (1, 1)])  # a 1x1 level is uniform for everyone
    assert diag1["sal_uniform_frac"].item() == pytest.approx((3 / 4 + 1) / 2)


def _reviewkd(path: str = "students[1]"):
    torch.manual_seed(0)
    ctx = DistillContext(example=torch.randn(1, 3, 16, 16), num_classes=5, epochs=3,
                         extras={"path": path})
    return build_distiller("reviewkd", TinyNet((4, 8, 12)), TinyNet((8, 16, 32)),
                           {"saliency_mix": 0.8, "warmup_epochs": 0}, ctx)


def test_reviewkd_logs_and_warns_once_when_most_maps_are_degenerate(capsys):
    d = _reviewkd()
    d.saliency_source = "explainer 'gradcam' at layer 'pool', native map 1x1 on 16x16 images"
    b = {"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 3]),
         "saliency": torch.full((4, 1, 16, 16), 0.25)}
    logs = d.train()(b, 1).logs
    assert logs["sal_degenerate_frac"] == 1.0 and logs["sal_uniform_frac"] == 1.0
    d.epoch_end({"epoch": 1, "logs": {"sal_degenerate_frac": 0.4}})  # a minority: no word
    assert _warnings(capsys) == []
    for epoch in (2, 3):
        d.epoch_end({"epoch": epoch, "logs": logs})
    lines = _warnings(capsys)
    assert len(lines) == 1
    for part in ("students[1].params.saliency_mix", "100% of epoch 2", "'gradcam'", "layer 'pool'",
                 "1x1", "explain.params.layer"):
        assert part in lines[0], part


def test_informative_maps_are_not_degenerate(capsys):
    d = _reviewkd()
    sal = torch.rand(4, 1, 16, 16)
    logs = d.train()({"image": torch.randn(4, 3, 16, 16), "label": torch.tensor([0, 1, 2, 3]),
                      "saliency": sal}, 1).logs
    assert logs["sal_degenerate_frac"] == 0.0 and logs["sal_uniform_frac"] == 0.0
    d.epoch_end({"epoch": 1, "logs": logs})
    assert _warnings(capsys) == []


def _pool_gradcam_experiment() -> dict:
    """Grad-CAM at resnet8's global pool: a 1x1 map, as Grad-CAM of tv:resnet18's last stage
    on 32 px images; the cached maps are all constant."""
    return tiny_experiment(
        students=[{"name": "wrkd", "method": "reviewkd", "model": {"name": "resnet8"},
                   "params": {"saliency_mix": 0.8, "warmup_epochs": 0}}],
        explain={"method": "gradcam", "params": {"layer": "pool"}},
        evaluate={"subset_size": 4, "explainers": ["saliency"]},
        report={"enabled": False})


def test_preflight_warns_when_the_explainer_gives_1x1_maps(write_experiment, capsys):
    path = write_experiment(_pool_gradcam_experiment())
    assert run_main([str(path), "--check"]) == 0
    lines = _warnings(capsys)
    assert len(lines) == 1
    for part in ("explain:", "'gradcam'", "layer 'pool'", "native map 1x1 on 16x16", "students[0]",
                 "explain.params.layer: -2"):
        assert part in lines[0], part
    exp = _pool_gradcam_experiment()
    exp["explain"]["params"]["layer"] = -1  # the last stage: 4x4 at 16 px, no word
    assert run_main([str(write_experiment(exp, "ok.yaml")), "--check"]) == 0
    assert _warnings(capsys) == []


def test_training_on_constant_maps_logs_them_and_warns_once(write_experiment, tmp_path: Path, capsys):
    exp = _pool_gradcam_experiment()
    exp["train"] = {"epochs": 2, "batch_size": 16}
    out = tmp_path / "run"
    assert run_main([str(write_experiment(exp)), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "students" / "wrkd" / "history.jsonl").read_text().splitlines()]
    assert [r["logs"]["sal_degenerate_frac"] for r in rows] == [1.0, 1.0]
    assert [r["logs"]["sal_uniform_frac"] for r in rows] == [1.0, 1.0]
    train_warnings = [w for w in _warnings(capsys) if "saliency_mix" in w]
    assert len(train_warnings) == 1  # once per student, not once per epoch
    for part in ("students[0].params.saliency_mix", "'gradcam'", "layer 'pool'", "native map 1x1"):
        assert part in train_warnings[0], part
