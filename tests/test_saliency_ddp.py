"""Sharded saliency-cache build under ``torchrun --nproc_per_node 2`` (gloo, CPU): each rank
explains half of the blocks, the file equals a one-process build bit for bit, and a build longer
than the process-group timeout finishes because no rank waits for another's share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xkd.config import ExplainConfig
from xkd.explain import SaliencyCache
from tests.test_saliency_cache import Images, Tiny

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 6  # each rank sleeps 3 x 1.5 s in its share: 9 s if one rank did all 6 blocks


@pytest.mark.slow  # two torchrun processes importing torch + captum: 40 s on the shared 2-core machine
def test_torchrun_two_ranks_build_the_one_process_cache_bit_for_bit(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XKD_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "saliency_ddp_worker.py"), str(tmp_path), str(TIMEOUT_S)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and {r["status"] for r in ranks} == {"built"}
    assert [r["explained"] for r in ranks] == [6, 6] and [r["calls"] for r in ranks] == [3, 3]
    assert ranks[0]["sum"] == ranks[1]["sum"]  # every rank reads the same maps

    torch.manual_seed(0)
    one = SaliencyCache.build_or_load(tmp_path / "one", Tiny(), Images(n=12), ExplainConfig(
        method="gradcam", max_batch=2), "images:n=12", device="cpu", batch_size=2, progress=False, block=2)
    index = json.loads((tmp_path / "ddp" / "index.json").read_text())["caches"]
    entry = index[one.key]  # same key: same teacher, data, explainer and layout
    assert entry["complete"] and entry["ranks"] == 2
    assert (tmp_path / "ddp" / entry["file"]).read_bytes() == one.path.read_bytes()


EXPERIMENT = {
    "name": "tiny", "seed": 0, "device": "cpu",
    "data": {"name": "shapes", "params": {"num_classes": 3, "image_size": 16, "train_size": 48,
                                          "val_size": 16, "test_size": 16}},
    "teacher": {"model": {"name": "resnet8"}},
    "students": [{"name": "w", "method": "reviewkd", "model": {"name": "resnet8"},
                  "params": {"saliency_mix": 0.5, "warmup_epochs": 0}}],
    "train": {"epochs": 1, "batch_size": 16},
    "evaluate": {"subset_size": 4, "explainers": ["gradcam"]},
    "report": {"enabled": False},
    "distributed": {"timeout_minutes": 2},
}


@pytest.mark.slow  # a whole run in two torchrun processes: about a minute on the shared machine
def test_torchrun_run_builds_the_students_cache_on_both_ranks(tmp_path, write_experiment):
    from xkd.data import build_data
    from xkd.config import DataConfig
    from xkd.io import torch_load
    from xkd.models import build as build_model

    env = dict(os.environ, PYTHONPATH=str(ROOT), XKD_NO_PROGRESS="1", OMP_NUM_THREADS="1")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "xkd.run", str(write_experiment(EXPERIMENT)), "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    (key, entry), = json.loads((out / "saliency" / "index.json").read_text())["caches"].items()
    assert entry["complete"] and entry["ranks"] == 2 and entry["shape"] == [48, 1, 4, 4]  # resnet8's 4x4 stage

    teacher = build_model("resnet8", num_classes=3, image_size=16)  # the run's teacher, one process
    teacher.load_state_dict(torch_load(out / "teacher" / "checkpoint.pt")["model"])
    bundle = build_data(DataConfig.model_validate(EXPERIMENT["data"]), seed=0)
    one = SaliencyCache.build_or_load(tmp_path / "one", teacher.eval(), bundle.train, ExplainConfig(),
                                      bundle.identity, "cpu", batch_size=64, progress=False)
    assert one.key == key and one.path.read_bytes() == (out / "saliency" / entry["file"]).read_bytes()
