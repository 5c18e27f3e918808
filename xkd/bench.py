"""Benchmarks: ``python -m xkd.bench [--only NAME ...] [--out FILE]``.

Targets are ratios measured in one run on the same machine (DESIGN section 8), never timed
assertions in tests:

* ``weighted_step``: saliency-weighted ReviewKD step (cached saliency in the batch) over a plain
  ReviewKD step, same models and batch (target <= 1.05).
* ``cache_build``: building the Grad-CAM / Saliency cache of the train split over one epoch of the
  student that consumes it (target <= 1.0).
* ``deletion_insertion``: deletion + insertion over the bare forwards of the same perturbed images
  at max_batch 64 and 256 (target <= 1.05 each), over a RISE-style per-sample loop (target >= 2)
  and per-sample calls; channels_last over the default layout (``xkd.bench_metrics``).
* ``report_forwards``: images the report's perturbation metrics forward with shared forwards over
  the sum of their own forwards (``xkd.bench_metrics``).
* ``engine``: a ``ce`` epoch over a bare PyTorch loop (target <= 1.05) and the augmentation's share
  of a ``ce`` epoch (target <= 3 %) (``xkd.bench_engine``).
* ``startup``: ``python -m xkd.run --help`` wall time (target < 1 s), ``--list``, peak memory.
* ``quantus``: deletion, insertion and the localisation metrics against Quantus on the same
  fixture: time ratios (target >= 2) and the largest per-sample value difference
  (``xkd.bench_quantus``; skipped with one line when quantus is not installed).
* ``saliency_scale``: 224 px, tv:resnet18: cached-map bytes, build time per map over a training
  step per image, weighted over plain step, map read over image load, bytes read on open
  (``xkd.bench_scale``; no target: docs/scale.md scales them to ImageNet).

Prints a table and writes JSON (default ``bench_results/bench.json``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from xkd.config import DataConfig, ExplainConfig, TrainConfig
from xkd.data import JointAugment, build_data
from xkd.distill import DistillContext, build_distiller
from xkd.bench_scale import bench_saliency_scale
from xkd.models import build as build_model
from xkd.bench_engine import bench_engine, bench_startup
from xkd.bench_metrics import bench_deletion_insertion, bench_report_forwards
from xkd.bench_quantus import bench_quantus


def _shapes(n: int, size: int = 32) -> Any:
    return build_data(DataConfig(name="shapes", params={"num_classes": 4, "image_size": size,
                                                        "train_size": n, "val_size": 16,
                                                        "test_size": 16}), seed=0)


def _pair(bundle: Any, teacher: str = "resnet20", student: str = "resnet8") -> tuple[Any, Any]:
    torch.manual_seed(0)
    t = build_model(teacher, num_classes=bundle.num_classes).eval()
    s = build_model(student, num_classes=bundle.num_classes)
    return t, s


def _reviewkd(bundle: Any, teacher: Any, student: Any, mix: float) -> Any:
    ctx = DistillContext(example=bundle.train[0]["image"].unsqueeze(0), num_classes=bundle.num_classes,
                         epochs=10, dataset_size=len(bundle.train))
    return build_distiller("reviewkd", student, teacher, {"saliency_mix": mix, "warmup_epochs": 0}, ctx)


def bench_weighted_step(batch_size: int = 64, repeats: int = 15) -> dict[str, Any]:
    """Saliency-weighted ReviewKD step with cached saliency over plain ReviewKD (same batch)."""
    bundle = _shapes(batch_size)
    teacher, student = _pair(bundle)
    batch = next(iter(DataLoader(bundle.train, batch_size=batch_size)))
    batch["saliency"] = torch.rand(batch_size, 1, 32, 32)
    plain = _reviewkd(bundle, teacher, student, 0.0)
    weighted = _reviewkd(bundle, teacher, student, 0.8)

    def step(d: Any) -> Callable[[], None]:
        opt = torch.optim.SGD([p for m in d.trainable_modules().parameters() for p in [m]], lr=1e-3)

        def run() -> None:
            out = d(batch, 5)
            sum(out.losses.values()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    runs = {"plain": step(plain), "weighted": step(weighted)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn(), fn()
    for _ in range(repeats):  # interleaved so drifting machine load hits both alike
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    p, w = statistics.median(times["plain"]), statistics.median(times["weighted"])
    return {"plain_ms": 1000 * p, "weighted_ms": 1000 * w, "ratio": w / p, "target": 1.05,
            "batch_size": batch_size, "models": "resnet20 -> resnet8, 32x32"}


def bench_cache_build(n: int = 1024, batch_size: int = 64) -> dict[str, Any]:
    """Cache build (gradcam, saliency) over one epoch of the saliency-weighted student."""
    from xkd.engine import fit
    from xkd.explain import SaliencyCache

    bundle = _shapes(n)
    teacher, student = _pair(bundle)
    out: dict[str, Any] = {"n": n, "models": "resnet20 -> resnet8, 32x32"}
    with tempfile.TemporaryDirectory() as tmp:
        caches = {}
        for method in ("gradcam", "saliency"):
            t = time.perf_counter()
            caches[method] = SaliencyCache.build_or_load(
                Path(tmp) / "sal", teacher, bundle.train, ExplainConfig(method=method, max_batch=batch_size),
                bundle.identity, torch.device("cpu"), batch_size=batch_size, progress=False)
            out[f"{method}_build_s"] = time.perf_counter() - t
        d = _reviewkd(bundle, teacher, student, 0.8)
        train = JointAugment(bundle.train, bundle.train_transform, {"saliency": caches["gradcam"]})
        cfg = TrainConfig(epochs=1, batch_size=batch_size)
        t = time.perf_counter()
        fit(d, train, None, cfg, Path(tmp) / "student", device=torch.device("cpu"), seed=0, log=None)
        out["student_epoch_s"] = time.perf_counter() - t
    for method in ("gradcam", "saliency"):
        out[f"{method}_ratio"] = out[f"{method}_build_s"] / out["student_epoch_s"]
    out["target"] = 1.0
    return out


BENCHES: dict[str, Callable[[], dict[str, Any]]] = {
    "weighted_step": bench_weighted_step,
    "cache_build": bench_cache_build,
    "deletion_insertion": bench_deletion_insertion,
    "report_forwards": bench_report_forwards,
    "engine": bench_engine,
    "startup": bench_startup,
    "saliency_scale": bench_saliency_scale,  # xkd.bench_scale: the ratios docs/scale.md uses
    "quantus": bench_quantus,  # optional contender: skipped (one line) without quantus installed
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xkd.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run these benchmarks only")
    p.add_argument("--out", default="bench_results/bench.json")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (checks the output, not the speed)")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                           "threads": torch.get_num_threads(), "cpu": platform.processor(),
                                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    for name in args.only or list(BENCHES):
        print(f"[bench] {name} ...", file=sys.stderr)
        fn = BENCHES[name]
        results[name] = fn(tiny=True) if args.tiny and "tiny" in inspect.signature(fn).parameters else fn()
    print(f"{'benchmark':<20} {'measure':<30} {'value':>10} {'target':>8}")
    for name, r in results.items():
        if name == "machine":
            continue
        targets = r.get("targets", {})
        for k, v in r.items():
            if "ratio" in k or "speedup" in k or "share" in k or k in targets:
                tgt = targets.get(k, r.get("target") if "ratio" in k else "")
                val = f"{v:>10.3f}" if v == 0 or abs(v) >= 1e-3 else f"{v:>10.1e}"  # value differences
                print(f"{name:<20} {k:<30} {val} {str(tgt if tgt is not None else ''):>8}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
