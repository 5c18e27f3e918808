"""The slow saliency_mix sweep (issue 3): experiments/decoy_saliency_mix_sweep.yaml, shrunk in data
and epochs but run for real over two seeds, report included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xkd.run import main

SWEEP = Path(__file__).resolve().parents[1] / "experiments" / "decoy_saliency_mix_sweep.yaml"
MIXES = ["0.25", "0.5", "0.8", "1.0"]


@pytest.mark.slow
def test_saliency_mix_sweep_runs_and_pairs_every_mix_with_plain_review(tmp_path: Path):
    over = ["seeds=[0,1]", "device=cpu", "data.params.train_size=128", "data.params.val_size=32",
            "data.params.test_size=64", "data.params.image_size=16", "data.params.decoy.size=4",
            "train.epochs=2", "teacher.train.epochs=2", "evaluate.subset_size=8"]
    out = tmp_path / "sweep"
    assert main([str(SWEEP), "--out", str(out)] + [a for o in over for a in ("--set", o)]) == 0
    for seed in (0, 1):
        rows = {r["model"]: r for r in json.loads((out / f"seed-{seed}" / "summary.json").read_text())["rows"]}
        assert set(rows) == {"teacher", "mix_0"} | {f"mix_{m}" for m in MIXES}
        # a = 0 needs no teacher saliency; every a > 0 student reads the same cached Grad-CAM maps,
        # so their weight-map quality on the masks is identical and the cache is built once
        assert "weight_map_relevance_mass" not in rows["mix_0"]
        quality = {rows[f"mix_{m}"]["weight_map_relevance_mass"] for m in MIXES}
        assert len(quality) == 1 and 0.0 <= quality.pop() <= 1.0
        assert len(list((out / f"seed-{seed}" / "saliency").glob("gradcam-*.npy"))) == 1
        for r in rows.values():
            assert 0.0 <= r["test_decoy_shuffled_acc"] <= 1.0
    seeds = json.loads((out / "report" / "seeds.json").read_text())
    assert seeds["baseline"] == "mix_0"
    assert set(seeds["paired"]) == {f"mix_{m}" for m in MIXES}
    for m in MIXES:
        d = seeds["paired"][f"mix_{m}"]["test_decoy_shuffled_acc"]
        assert d["n"] == 2 and d["ci_low"] <= d["mean"] <= d["ci_high"]
