"""Run by tests/test_saliency_ddp.py under ``torchrun --nproc_per_node 2``: every rank builds its
share of a saliency cache (each block's explainer call sleeps ``SLEEP`` seconds, so a rank-0-only
build would outlast the short process-group timeout), then records what it explained."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from xkd.config import ExplainConfig
from xkd.engine import cleanup, init_distributed
from xkd.explain import SaliencyCache
from xkd.explain.explainers import Explainer
from tests.test_saliency_cache import Images, Tiny

SLEEP = 1.5


def main(out: str, timeout_s: int) -> None:
    torch.set_num_threads(1)
    info = init_distributed("cpu", timeout_s=timeout_s)
    seen: list[int] = []
    original = Explainer._run

    def slow(self, x, *args):
        seen.append(len(x))
        time.sleep(SLEEP)
        return original(self, x, *args)

    Explainer._run = slow  # type: ignore[method-assign]
    torch.manual_seed(0)
    teacher = Tiny()
    t0 = time.perf_counter()
    cache = SaliencyCache.build_or_load(Path(out) / "ddp", teacher, Images(n=12), ExplainConfig(
        method="gradcam", max_batch=2), "images:n=12", device="cpu", batch_size=2, progress=False, block=2)
    maps = cache.batch(range(12))  # every rank reads the whole cache
    (Path(out) / f"rank{info.rank}.json").write_text(json.dumps({
        "world": info.world_size, "explained": sum(seen), "calls": len(seen), "status": cache.status,
        "seconds": time.perf_counter() - t0, "sum": float(maps.double().sum())}))
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
