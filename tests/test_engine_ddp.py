"""DDP: two CPU processes (gloo) train a tiny distiller; weights stay identical, only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.conftest import free_port, gloo_env
from tests.test_engine_helpers import TinyData, make, state, train_cfg


def _worker(rank: int, world: int, port: int, base: str) -> None:
    gloo_env(rank, world, port)
    from xkd.engine import cleanup, fit, init_distributed, is_main_process

    info = init_distributed("cpu")
    assert info.world_size == world and info.rank == rank and info.backend == "gloo"
    assert is_main_process() == (rank == 0)
    d = make(seed=100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    init = state(d)
    # a separate folder per rank shows who writes (real runs share one folder)
    res = fit(d, TinyData(48), TinyData(16, seed=1), train_cfg(epochs=2), Path(base) / f"rank{rank}",
              device=torch.device("cpu"), seed=3, log=None)
    torch.save({"final": state(d), "init": init, "best": res.best_metric, "epochs": res.epochs_run,
                "history": len(res.history)}, Path(base) / f"state{rank}.pt")
    cleanup()


def test_two_process_ddp_identical_weights_and_rank0_writes(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    s0 = torch.load(tmp_path / "state0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "state1.pt", weights_only=True)
    assert not torch.equal(s0["init"]["student.fc.weight"], s1["init"]["student.fc.weight"])
    for k in s0["final"]:
        assert torch.equal(s0["final"][k], s1["final"][k]), k
    assert not torch.equal(s0["final"]["student.fc.weight"], s0["init"]["student.fc.weight"])  # it trained
    assert s0["epochs"] == s1["epochs"] == 2
    assert s0["best"] == s1["best"] is not None  # validation metrics are broadcast from rank 0
    assert s0["history"] == 2 and s1["history"] == 0

    r0 = tmp_path / "rank0"
    assert sorted(p.name for p in r0.iterdir()) == ["best.pt", "history.jsonl", "last.pt"]
    assert not (tmp_path / "rank1").exists()
    rows = [json.loads(x) for x in (r0 / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["step"] for r in rows] == [3, 6]  # 48 samples sharded over 2 ranks, batch 8
    last = torch.load(r0 / "last.pt", weights_only=True)
    assert all(torch.equal(last["trainable"][k], s0["final"][k]) for k in s0["final"])
