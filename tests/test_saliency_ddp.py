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
