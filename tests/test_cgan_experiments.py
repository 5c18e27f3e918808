"""--smoke runs of both cGAN-KD experiment files through the CLI (every stage: teacher, GAN,
ratio fit, rejection sampling, filtering, fine-tuned students). About 8 s and 3 s on the idle
2-core machine, so they run in the default suite (issue 8 asks for both)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xkd.run import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("which", ["classification", "regression"])
def test_experiment_file_smoke_runs_every_stage(tmp_path: Path, which: str):
    out = tmp_path / "run"
    assert main([str(ROOT / "experiments" / f"cgan_kd_{which}.yaml"), "--smoke", "--out", str(out),
                 "--set", "seeds=null", "--set", "report.enabled=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["model"]: r for r in summary["rows"]}
    score = "test_acc" if which == "classification" else "test_mae"
    assert summary["task"] == which and all(score in r for r in rows.values())
    for name in ("cgan_kd", "cgan_kd_no_subsample", "cgan_kd_no_filter"):
        r = rows[name]
        assert r["fake_used"] == 64 and r["gan_seconds"] > 0 and r["filtering_seconds"] >= 0
        assert r["train_seconds"] > 0 and r["sampling_seconds"] >= 0
    assert "ratio_fit_seconds" in rows["cgan_kd"] and "ratio_fit_seconds" not in rows["cgan_kd_no_subsample"]
    # no filter: the kept set is everything subsampled
    assert rows["cgan_kd_no_filter"]["fake_after_filter"] == rows["cgan_kd_no_filter"]["fake_after_subsample"]
    assert rows["cgan_kd"]["fake_after_filter"] < rows["cgan_kd"]["fake_after_subsample"]
    assert (out / "cgan" / "generator.pt").is_file() and (out / "cgan" / "samples.png").is_file()
    # one fake set per distinct (subsample, filter, size) setting; "+ KD" reuses cgan_kd's
    assert len(list((out / "cgan").glob("fake_*.npz"))) == 3
