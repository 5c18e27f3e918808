"""``python -m xkd.bench --only deletion_insertion report_forwards``: metric speed as ratios.

* ``deletion_insertion``: deletion + insertion (RISE) on N images x T steps over the bare
  forwards of the same perturbed images (built beforehand, ``torch.inference_mode``, nothing
  else) in chunks of ``max_batch`` 64 and 256 (target <= 1.05 each) and over the floor (bare
  forwards with the metric's own chunk size and layout: what building the perturbed inputs
  costs); the batched metric over a per-sample loop in the RISE reference's style (one image,
  one forward per step; target >= 2) and over calling the metric one image at a time;
  ``channels_last`` weights over the default layout for the bare forwards.
* ``report_forwards``: the report's perturbation metrics (``xkd.report.compute.report_params``)
  on one model and map: images forwarded inside ``shared_forwards()`` over the sum of the
  metrics' own forwards (a counting wrapper), and the time ratio.

Timings are interleaved round by round (contenders see the same machine load) and the medians of
the per-round ratios are reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from xkd.metrics import faithfulness as FA
from xkd.metrics._forward import chunk_size
from xkd.models import build as build_model


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per round of each contender, contenders alternating within every round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def median_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num / den``."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


class Counting(nn.Module):
    """A model wrapper that counts the images it forwards."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.inner(x)


def _fixture(n: int, size: int = 32, classes: int = 10) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=classes).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=g)
    sal = torch.rand(n, 1, size, size, generator=g)
    with torch.inference_mode():
        target = model(x).argmax(1).clone()
    return model, x, sal, target


def _perturbed(x: torch.Tensor, sal: torch.Tensor, steps: int) -> torch.Tensor:
    """The deletion and insertion inputs of ``x`` (clean first), (n * (2T+1), C, H, W)."""
    from xkd.metrics._ops import stable_rank, steps_schedule, substrate

    n, hw = x.shape[0], x.shape[2] * x.shape[3]
    rank = stable_rank(sal.reshape(n, -1)).view_as(sal)
    _, counts = steps_schedule(hw, steps)
    zero, blur = substrate(x, "zero", 11, 5.0), substrate(x, "blur", 11, 5.0)
    m = rank[:, None] < counts.view(1, -1, 1, 1, 1)
    dele = torch.where(m[:, 1:], zero[:, None], x[:, None])
    ins = torch.where(m[:, :-1], x[:, None], blur[:, None])
    return torch.cat([x[:, None], dele, ins], 1).reshape(-1, *x.shape[1:])


def _rise_loop(model: nn.Module, x: torch.Tensor, sal: torch.Tensor, target: torch.Tensor, steps: int) -> None:
    """The RISE reference's per-sample evaluation: one image, one forward per step and curve."""
    from xkd.metrics._ops import steps_schedule, substrate

    hw = x.shape[2] * x.shape[3]
    _, counts = steps_schedule(hw, steps)
    with torch.no_grad():
        for i in range(x.shape[0]):
            xi, t = x[i:i + 1], int(target[i])
            order = torch.argsort(sal[i].flatten(), descending=True, stable=True)
            zero, blur = substrate(xi, "zero", 11, 5.0), substrate(xi, "blur", 11, 5.0)
            model(xi).softmax(1)[0, t]
            for start, fill, curve in ((xi, zero, "deletion"), (blur, xi, "insertion")):
                img = start.clone().flatten(2)
                src = fill.flatten(2)
                for c in range(1, counts.numel() if curve == "deletion" else counts.numel() - 1):
                    idx = order[:int(counts[c])]
                    img[..., idx] = src[..., idx]
                    model(img.view_as(xi)).softmax(1)[0, t]


def bench_deletion_insertion(tiny: bool = False) -> dict[str, Any]:
    """Deletion+insertion over the bare forwards of the same images, at max_batch 64 and 256."""
    n, steps, rounds, loop_n = (16, 8, 2, 4) if tiny else (64, 32, 5, 8)
    model, x, sal, target = _fixture(n)
    imgs = _perturbed(x[:min(n, 32)], sal[:min(n, 32)], steps)
    total = n * (2 * steps + 1)  # one clean and 2T perturbed forwards per image
    reps = -(-total // imgs.shape[0])
    pool = imgs.repeat(reps, 1, 1, 1)[:total]

    def bare(mb: int) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for i in range(0, total, mb):
                    model(pool[i:i + mb])
        return run

    def metric(mb: int) -> Callable[[], None]:
        return lambda: FA.deletion_insertion(model, x, sal, target, steps=steps, max_batch=mb)

    metric(256)()  # probes the model's activation size
    auto = chunk_size(model, x, 256)
    fns = {"metric_64": metric(64), "bare_64": bare(64), "metric_256": metric(256), "bare_256": bare(256),
           "bare_auto": bare(auto), "bare_auto_cl": _channels_last(model, bare(auto))}
    times = interleaved(fns, rounds)
    loop = interleaved({"batched": metric(256), "rise_loop": lambda: _rise_loop(model, x[:loop_n], sal[:loop_n],
                                                                                 target[:loop_n], steps),
                        "calls": lambda: [FA.deletion_insertion(model, x[i:i + 1], sal[i:i + 1], target[i:i + 1],
                                                                steps=steps) for i in range(loop_n)]},
                       max(1, rounds // 2))
    scale = n / loop_n
    return {
        "n": n, "steps": steps, "forwards": total, "model": "resnet8, 32x32, 1 thread" if
        torch.get_num_threads() == 1 else f"resnet8, 32x32, {torch.get_num_threads()} threads",
        "auto_chunk": auto,
        "metric_64_s": statistics.median(times["metric_64"]), "bare_64_s": statistics.median(times["bare_64"]),
        "metric_256_s": statistics.median(times["metric_256"]), "bare_256_s": statistics.median(times["bare_256"]),
        "ratio_over_bare_64": median_ratio(times, "metric_64", "bare_64"),
        "ratio_over_bare_256": median_ratio(times, "metric_256", "bare_256"),
        "bare_256_over_bare_64": median_ratio(times, "bare_256", "bare_64"),
        "ratio_over_bare_floor": median_ratio(times, "metric_256", "bare_auto_cl"),
        "channels_last_ratio": median_ratio(times, "bare_auto_cl", "bare_auto"),
        "speedup_over_rise_loop": statistics.median(r * scale / b for r, b in zip(loop["rise_loop"], loop["batched"])),
        "speedup_over_per_sample_calls": statistics.median(c * scale / b for c, b in zip(loop["calls"], loop["batched"])),
        "targets": {"ratio_over_bare_64": 1.05, "ratio_over_bare_256": 1.05, "speedup_over_rise_loop": 2.0},
    }


def _channels_last(model: nn.Module, run: Callable[[], None]) -> Callable[[], None]:
    """``run`` with the model's weights in channels_last (restored afterwards)."""
    def go() -> None:
        model.to(memory_format=torch.channels_last)
        try:
            run()
        finally:
            model.to(memory_format=torch.contiguous_format)
    return go


def bench_report_forwards(tiny: bool = False) -> dict[str, Any]:
    """Images forwarded by the report's perturbation metrics with and without shared forwards."""
    from xkd.metrics import METRICS, shared_forwards
    from xkd.report.compute import PERTURBATION_SAMPLES, report_params

    n = 4 if tiny else PERTURBATION_SAMPLES
    model, x, sal, target = _fixture(n)
    params = report_params(32, 32, [0.25, 0.25, 0.25])
    names = [k for k in ("deletion", "insertion", "aopc_morf", "aopc_lerf", "faithfulness_correlation",
                         "infidelity", "road_morf", "road_lerf") if k in METRICS.names()]
    metrics = [METRICS.build(k, **{p: v for p, v in params.get(k, {}).items()
                                   if p in METRICS.entry(k).params.model_fields}) for k in names]
    counted = {"separate": Counting(model), "shared": Counting(model)}

    def run(which: str) -> Callable[[], None]:
        def go() -> None:
            m = counted[which]
            m.images = 0
            inputs = {"model": m, "x": x, "attribution": sal, "target": target}
            if which == "shared":
                with shared_forwards():
                    for metric in metrics:
                        metric.compute(**inputs)
            else:
                for metric in metrics:
                    metric.compute(**inputs)
        return go

    times = interleaved({"separate": run("separate"), "shared": run("shared")}, 1 if tiny else 3)
    sep, sh = counted["separate"].images, counted["shared"].images
    return {"n": n, "metrics": names, "separate_images": sep, "shared_images": sh,
            "forwards_ratio": sh / sep, "time_ratio": median_ratio(times, "shared", "separate"),
            "targets": {"forwards_ratio": 1.0}}
