"""``python -m xkd.bench --only saliency_scale``: the ratios docs/scale.md scales to ImageNet.

At 224 px with a ``tv:resnet18`` teacher and student (random weights, an image folder of PNGs
written here): bytes per cached Grad-CAM map (new storage vs input resolution), build time per
map over a weighted-ReviewKD training step per image, the weighted step over the plain one, the
time to read one cached map over the time to load one image, and bytes read when opening the
cache (``/proc/self/io`` rchar) vs the file size.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from xkd.config import DataConfig, ExplainConfig
from xkd.distill import DistillContext, build_distiller
from xkd.models import build as build_model


def _rchar() -> int:
    try:
        with open("/proc/self/io") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("rchar:"))
    except (OSError, StopIteration):
        return -1


def _folder(root: Path, n: int) -> Any:
    from xkd.data import build_data

    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return build_data(DataConfig(name="imagefolder", root=str(root), params={
        "image_size": 224, "val_fraction": 0.05, "test_fraction": 0.05}), seed=0)


def bench_saliency_scale(n: int = 40, batch_size: int = 4, repeats: int = 5) -> dict[str, Any]:
    from xkd.explain import SaliencyCache, load_existing

    torch.manual_seed(0)
    out: dict[str, Any] = {"models": "tv:resnet18 -> tv:resnet18, 224x224, CPU"}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = _folder(Path(tmp) / "img", n)
        train = bundle.train
        teacher = build_model("tv:resnet18", num_classes=2, image_size=224).eval()
        student = build_model("tv:resnet18", num_classes=2, image_size=224)
        t = time.perf_counter()
        cache = SaliencyCache.build_or_load(Path(tmp) / "sal", teacher, train, ExplainConfig(),
                                            bundle.identity, "cpu", batch_size=batch_size, progress=False)
        build = (time.perf_counter() - t) / len(train)
        out.update(maps=len(train), build_s_per_map=build, stored=list(cache.shape),
                   bytes_per_map=cache.layout.stride / cache.layout.block,
                   input_res_bytes_per_map=224 * 224 * 2)
        out["bytes_ratio_vs_input_res"] = out["bytes_per_map"] / out["input_res_bytes_per_map"]
        before = _rchar()
        load_existing(Path(tmp) / "sal", cache.key)
        out.update(open_bytes_read=_rchar() - before, file_bytes=cache.path.stat().st_size)
        idx = list(range(len(train)))
        t = time.perf_counter()
        for i in idx:
            train[i]
        image_s = (time.perf_counter() - t) / len(idx)
        fresh = SaliencyCache(cache.root, cache.key, cache.entry)  # blocks verified on first read
        t = time.perf_counter()
        for i in idx:
            fresh[i]
        map_s = (time.perf_counter() - t) / len(idx)
        out.update(load_image_ms=1000 * image_s, load_map_ms=1000 * map_s, map_over_image_ratio=map_s / image_s)
        batch = next(iter(DataLoader(train, batch_size=batch_size)))
        batch["saliency"] = cache.batch(batch["index"])
        ctx = DistillContext(example=train[0]["image"].unsqueeze(0), num_classes=2, epochs=10,
                             dataset_size=len(train))
        runs = {}
        for name, mix in (("plain", 0.0), ("weighted", 0.8)):
            d = build_distiller("reviewkd", student, teacher, {"saliency_mix": mix, "warmup_epochs": 0}, ctx)
            opt = torch.optim.SGD(d.trainable_modules().parameters(), lr=1e-3)

            def run(d: Any = d, opt: Any = opt) -> float:
                t0 = time.perf_counter()
                sum(d(batch, 5).losses.values()).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return time.perf_counter() - t0
            run()
            runs[name] = run
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(repeats):  # interleaved so drifting machine load hits both alike
            for k, fn in runs.items():
                times[k].append(fn())
        steps = {k: statistics.median(v) for k, v in times.items()}
        out.update(step_plain_s_per_image=steps["plain"] / batch_size,
                   step_weighted_s_per_image=steps["weighted"] / batch_size,
                   weighted_step_ratio=steps["weighted"] / steps["plain"],
                   build_over_step_ratio=build / (steps["weighted"] / batch_size))
    return out
