"""Test-set predictions split over DDP ranks (issue 18: no long rank-0-only stage): with two gloo
processes every rank gets every sample's logits, in dataset order, equal to one process's."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.conftest import free_port, gloo_env
from tests.test_engine_helpers import TinyData, TinyNet


def _worker(rank: int, world: int, port: int, out: str) -> None:
    gloo_env(rank, world, port)
    from xkd.engine import cleanup, init_distributed
    from xkd.engine.evaluate import predict_sharded

    init_distributed("cpu")
    torch.manual_seed(0)
    model = TinyNet()
    logits, labels = predict_sharded(model, TinyData(37, seed=5, flip=False), "cpu", batch_size=4)
    torch.save({"logits": logits, "labels": labels}, Path(out) / f"rank{rank}.pt")
    cleanup()


def test_two_ranks_each_get_all_predictions_in_order(tmp_path: Path) -> None:
    from xkd.engine.evaluate import predict

    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    ref_logits, ref_labels = predict(TinyNet(), TinyData(37, seed=5, flip=False), "cpu", batch_size=4)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["logits"].shape == ref_logits.shape == (37, ref_logits.shape[1])
        assert torch.equal(got["labels"], ref_labels)
        torch.testing.assert_close(got["logits"], ref_logits, rtol=0, atol=1e-6)
