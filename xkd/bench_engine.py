"""``python -m xkd.bench --only engine startup``: training-loop and start-up costs as ratios.

* ``engine``: a ``ce`` epoch through :func:`xkd.engine.fit` (no augmentation) over a bare
  hand-written PyTorch loop on the same model, data, batch size and optimiser (target <= 1.05),
  one thread, in wall time and in process CPU time (which other processes' load cannot inflate);
  the share of a ``ce`` epoch with the default augmentation (crop 4 + flip) spent in the batched
  augmentation (target <= 3 %), next to what torchvision's per-sample transform costs for the
  same samples.
* ``startup``: wall time of ``python -m xkd.run --help`` (target < 1 s) and ``--list`` in fresh
  interpreters, and the peak memory of ``--help``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from xkd.bench_metrics import interleaved, median_ratio


def _ce_setup(n: int) -> tuple[Any, Any]:
    from xkd.config import AugmentConfig, DataConfig
    from xkd.data import build_data

    bundle = build_data(DataConfig(name="shapes", augment=AugmentConfig(crop_padding=4, hflip=True),
                                   params={"num_classes": 4, "image_size": 32, "train_size": n,
                                           "val_size": 16, "test_size": 16}), seed=0)
    return bundle, bundle.train_transform


def bench_engine(tiny: bool = False) -> dict[str, Any]:
    """ce epoch vs a bare loop, and the augmentation's share of a ce epoch."""
    n, bs, rounds = (96, 32, 1) if tiny else (1024, 64, 7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread each: the 2-core machines are shared; less noise
    try:
        return _bench_engine(n, bs, rounds)
    finally:
        torch.set_num_threads(threads)


def _bench_engine(n: int, bs: int, rounds: int) -> dict[str, Any]:
    from xkd.config import TrainConfig
    from xkd.data import JointAugment
    from xkd.distill import DistillContext, build_distiller
    from xkd.engine import fit
    from xkd.models import build as build_model

    bundle, transform = _ce_setup(n)
    torch.manual_seed(0)
    ctx = DistillContext(example=bundle.train[0]["image"][None], num_classes=bundle.num_classes)
    d = build_distiller("ce", build_model("resnet8", num_classes=bundle.num_classes), None, {}, ctx)
    bare_model = build_model("resnet8", num_classes=bundle.num_classes)
    cfg = TrainConfig(epochs=1, batch_size=bs, amp=False)
    o = cfg.optimizer
    opt = torch.optim.SGD(bare_model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay)
    plain, augmented = JointAugment(bundle.train, None), JointAugment(bundle.train, transform)
    spent = [0.0]
    inner = augmented.augment_batch

    def timed_augment(batch: dict[str, Any]) -> dict[str, Any]:
        t = time.perf_counter()
        out = inner(batch)
        spent[0] += time.perf_counter() - t
        return out

    augmented.augment_batch = timed_augment  # type: ignore[method-assign]
    tmp = Path(tempfile.mkdtemp(prefix="xkd-bench-"))

    def engine(ds: Any, sub: str) -> Callable[[], None]:
        return lambda: fit(d, ds, None, cfg, tmp / sub, device=torch.device("cpu"), seed=0, log=None)

    def bare() -> None:
        bare_model.train()
        loader = DataLoader(bundle.train, batch_size=bs, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        for batch in loader:
            loss = F.cross_entropy(bare_model(batch["image"]), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    cpu: dict[str, list[float]] = {"bare": [], "engine": []}

    def cpu_timed(key: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:  # process CPU time: what other processes on the machine cannot inflate
            t = time.process_time()
            fn()
            cpu[key].append(time.process_time() - t)
        return run

    times = interleaved({"bare": cpu_timed("bare", bare), "engine": cpu_timed("engine", engine(plain, "plain")),
                         "engine_aug": engine(augmented, "aug")}, rounds)
    aug_s = spent[0] / (rounds + 1)  # warm-up round included
    epoch_aug = statistics.median(times["engine_aug"])
    return {"n": n, "batch_size": bs, "model": "resnet8 ce, 32x32",
            "bare_epoch_s": statistics.median(times["bare"]), "engine_epoch_s": statistics.median(times["engine"]),
            "engine_over_bare_ratio": median_ratio(times, "engine", "bare"),
            "engine_over_bare_cpu_ratio": median_ratio({k: v[1:] for k, v in cpu.items()}, "engine", "bare"),
            "threads": 1,
            "augmentation_s": aug_s, "augmentation_share": aug_s / epoch_aug,
            "per_sample_torchvision_share": _torchvision_per_sample(bundle.train, n) / epoch_aug,
            "targets": {"engine_over_bare_ratio": 1.05, "augmentation_share": 0.03}}


def _torchvision_per_sample(data: Any, n: int) -> float:
    """Seconds torchvision's per-sample RandomCrop + RandomHorizontalFlip take for ``n`` samples
    with their masks (how augmentation ran before issue 17)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    t = v2.Compose([v2.RandomCrop(32, padding=4, fill=0), v2.RandomHorizontalFlip()])
    samples = [data[i] for i in range(n)]
    start = time.perf_counter()
    for s in samples:
        t({"image": tv_tensors.Image(s["image"]), "mask": tv_tensors.Mask(s["mask"])})
    return time.perf_counter() - start


def _wall(args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True, timeout=300)
    return time.perf_counter() - t


_RSS = ("import runpy, sys; sys.argv = ['xkd.run', '--help']\n"
        "try:\n    runpy.run_module('xkd.run', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')), file=sys.stderr)")
"""Peak resident memory (kB) of ``--help``: VmHWM belongs to the exec'd image (ru_maxrss would keep
the forked bench process's peak)."""


def bench_startup(tiny: bool = False) -> dict[str, Any]:
    """``python -m xkd.run --help`` and ``--list`` in fresh interpreters."""
    runs = 1 if tiny else 5
    helps = [_wall(["-m", "xkd.run", "--help"]) for _ in range(runs)]
    lists = [_wall(["-m", "xkd.run", "--list"]) for _ in range(1 if tiny else 3)]
    rss = subprocess.run([sys.executable, "-c", _RSS], check=True, capture_output=True, text=True, timeout=300)
    bare = [_wall(["-c", "pass"]) for _ in range(runs)]
    return {"help_s": statistics.median(helps), "list_s": statistics.median(lists),
            "python_startup_s": statistics.median(bare),
            "help_peak_rss_mb": int(rss.stderr.strip().splitlines()[-1]) / 1024,
            "targets": {"help_s": 1.0}}
