"""``python -m xkd.bench --only quantus``: xkd's metrics against Quantus (an optional contender).

Quantus is never a dependency: without it this prints ``quantus not installed; skipped`` and the
bench goes on. With it (e.g. a venv with ``--system-site-packages`` and ``pip install quantus``),
on one thread, the same model, images, maps, masks and steps:

* deletion (RISE, xkd) vs Quantus ``PixelFlipping`` (Bach et al. 2015) set to the same
  perturbation: whole pixels in the same order (tie-free maps, so Quantus' unstable argsort and
  xkd's stable rank agree; ``features_in_step`` = channels x pixels per step), fill 0.0, the same
  steps, softmax of the model's own top-1 class;
* insertion: Quantus has no insertion metric; its ``PixelFlipping`` is given the blurred image
  (xkd's substrate) as input and a ``perturb_func`` that restores the clean pixels (its documented
  hook), so it forwards the same images as xkd's insertion;
* localisation: pointing game (``tolerance=0``), energy pointing game vs ``AttributionLocalisation``,
  relevance mass and rank accuracy, top-k intersection (``k`` pixels), on tie-free non-negative
  maps, where the definitions coincide.

Definitions aligned for the value check: Quantus' curve holds y_1..y_T (it never forwards the
clean image) and its AUC is ``np.trapz(dx=1)`` over them; xkd's curve holds y_0..y_T and its AUC
is the RISE trapezoid normalised by T. The curves are compared point by point (y_1..y_T), the
scores as xkd's AUC rule over [xkd's y_0, Quantus' y_1..y_T]. The pointing game of xkd scores the
fraction of tied maximisers that hit (Quantus: any); xkd's relevance mass uses |a| (Quantus: a);
``AttributionLocalisation`` adds 1e-9 to the denominator (and runs with ``abs=True``, its
documented setting, an identity on these maps). None matters on tie-free non-negative
maps. Timings are interleaved rounds; ratios are medians of per-round Quantus/xkd ratios.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable

import numpy as np
import torch

from xkd.bench_metrics import interleaved
from xkd.metrics import faithfulness as FA
from xkd.metrics import localisation as LO
from xkd.metrics._ops import steps_schedule, substrate, trapezoid_auc
from xkd.models import build as build_model

SKIPPED = "quantus not installed; skipped"


def bench_quantus(tiny: bool = False) -> dict[str, Any]:
    """xkd vs Quantus: time ratios and value agreement (skipped without quantus)."""
    try:
        import quantus
    except ImportError:
        print(SKIPPED)
        return {"skipped": SKIPPED}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _compare(quantus, tiny)
    finally:
        torch.set_num_threads(threads)


def fixture(n: int, size: int, classes: int = 10) -> dict[str, torch.Tensor | torch.nn.Module]:
    """resnet8 (eval), images, tie-free maps (a random permutation of distinct values, raised on
    the mask so the localisation scores vary), rectangle masks, the model's own top-1."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=classes).eval()
    g = torch.Generator().manual_seed(1)
    hw = size * size
    x = torch.randn(n, 3, size, size, generator=g)
    mask = torch.zeros(n, 1, size, size)
    for i in range(n):
        h, w = (int(v) for v in torch.randint(size // 6, size // 2, (2,), generator=g))
        r, c = int(torch.randint(0, size - h, (1,), generator=g)), int(torch.randint(0, size - w, (1,), generator=g))
        mask[i, 0, r:r + h, c:c + w] = 1.0
    perm = torch.stack([torch.randperm(hw, generator=g) for _ in range(n)]).double() / hw
    lift = 0.03 * torch.rand(n, 1, 1, 1, generator=g, dtype=torch.float64)  # some maximisers miss
    sal = (perm.view(n, 1, size, size) + mask.double() * lift).float()
    assert all(torch.unique(s).numel() == hw for s in sal.view(n, -1)), "maps must be tie-free"
    with torch.inference_mode():
        target = model(x).argmax(1).clone()
    return {"model": model, "x": x, "sal": sal, "mask": mask, "target": target}


def _restore_from(clean: np.ndarray) -> Callable[..., np.ndarray]:
    """A Quantus ``perturb_func`` that writes the clean image's values at ``indices`` (insertion)."""
    def restore(arr: np.ndarray, indices: np.ndarray, **_: Any) -> np.ndarray:
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = clean.reshape(arr.shape[0], -1)[rows, indices]
        return out
    return restore


def _compare(quantus: Any, tiny: bool) -> dict[str, Any]:
    n, size, steps, rounds, reps = (4, 36, 27, 1, 2) if tiny else (64, 36, 27, 5, 50)
    f = fixture(n, size)
    model, x, sal, mask, target = f["model"], f["x"], f["sal"], f["mask"], f["target"]
    c, hw = x.shape[1], size * size
    t_steps, counts = steps_schedule(hw, steps)
    per_step = int(counts[1])
    if hw % (c * per_step) or t_steps * per_step != hw:
        raise ValueError(f"{size}x{size} with {steps} steps cannot be matched in Quantus' PixelFlipping")
    blur = substrate(x, "blur", 11, 5.0)
    xn, yn, an, sn = x.numpy(), target.numpy(), sal.numpy(), mask.numpy()
    common = dict(features_in_step=c * per_step, normalise=False, abs=False, disable_warnings=True)
    q_del = quantus.PixelFlipping(perturb_baseline=0.0, **common)
    q_ins = quantus.PixelFlipping(perturb_func=_restore_from(xn), **common)
    call = dict(model=model, y_batch=yn, a_batch=an, channel_first=True, softmax=True, device="cpu", batch_size=n)
    out: dict[str, Any] = {}

    def ours_del() -> None:
        out["del"] = FA.deletion(model, x, sal, target, steps=steps, baseline=0.0)

    def ours_ins() -> None:
        out["ins"] = FA.insertion(model, x, sal, target, steps=steps, baseline="blur")

    def ours_both() -> None:
        FA.deletion_insertion(model, x, sal, target, steps=steps, deletion_baseline=0.0, insertion_start="blur")

    def q_deletion() -> None:
        out["q_del"] = np.asarray(q_del(x_batch=xn, **call), dtype=np.float64)

    def q_insertion() -> None:
        out["q_ins"] = np.asarray(q_ins(x_batch=blur.numpy(), **call), dtype=np.float64)

    perturb = interleaved({"ours_del": ours_del, "q_del": q_deletion, "ours_ins": ours_ins,
                           "q_ins": q_insertion, "ours_both": ours_both}, rounds)
    res: dict[str, Any] = {"n": n, "image": f"{size}x{size}", "steps": t_steps, "pixels_per_step": per_step,
                           "model": "resnet8, 1 thread", "quantus": getattr(quantus, "__version__", "?"),
                           "gpu": torch.cuda.is_available()}
    for key, ours, theirs in (("deletion", "del", "q_del"), ("insertion", "ins", "q_ins")):
        curve = out[ours].curves.double()
        q = torch.from_numpy(out[theirs])
        mine = curve[:, 1:]
        start = curve[:, :1]
        res[f"{key}_curve_maxdiff"] = float((mine - q).abs().max())
        res[f"{key}_auc_maxdiff"] = float((out[ours].values - trapezoid_auc(torch.cat([start, q], 1))).abs().max())
        res[f"speedup_{key}"] = _speedup(perturb, f"q_{ours}", f"ours_{ours}")
    res["speedup_deletion_insertion"] = statistics.median(
        (a + b) / o for a, b, o in zip(perturb["q_del"], perturb["q_ins"], perturb["ours_both"]))
    res.update(_localisation(quantus, xn, yn, an, sn, sal, mask, max(1, rounds), reps))
    res["targets"] = {k: 2.0 for k in res if k.startswith("speedup_")}
    res["targets"].update({k: 1e-5 for k in res if k.endswith("_maxdiff")})
    return res


def _speedup(times: dict[str, list[float]], theirs: str, ours: str) -> float:
    return statistics.median(t / o for t, o in zip(times[theirs], times[ours]))


def _localisation(quantus: Any, xn: np.ndarray, yn: np.ndarray, an: np.ndarray, sn: np.ndarray,
                  sal: torch.Tensor, mask: torch.Tensor, rounds: int, reps: int) -> dict[str, Any]:
    hw = sal.shape[2] * sal.shape[3]
    k = max(1, round(0.05 * hw))
    plain = dict(normalise=False, abs=False, disable_warnings=True)
    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "pointing_game": (lambda: LO.pointing_game(sal, mask, tolerance=0.0).values,
                          quantus.PointingGame(**plain)),
        "energy_pointing_game": (lambda: LO.energy_pointing_game(sal, mask).values,
                                 quantus.AttributionLocalisation(weighted=False, positive_attributions=True,
                                                                 max_size=1.0, **{**plain, "abs": True})),
        "relevance_mass_accuracy": (lambda: LO.relevance_mass_accuracy(sal, mask).values,
                                    quantus.RelevanceMassAccuracy(**plain)),
        "relevance_rank_accuracy": (lambda: LO.relevance_rank_accuracy(sal, mask).values,
                                    quantus.RelevanceRankAccuracy(**plain)),
        "top_k_intersection": (lambda: LO.top_k_intersection(sal, mask, k_fraction=k / hw).values,
                               quantus.TopKIntersection(k=k, **plain)),
    }
    res: dict[str, Any] = {"top_k": k}
    fns: dict[str, Callable[[], None]] = {}
    for name, (ours, metric) in pairs.items():
        theirs = (lambda m=metric: m(model=None, x_batch=xn, y_batch=yn, a_batch=an, s_batch=sn,
                                     channel_first=True, batch_size=len(xn)))
        a = ours().double()
        b = torch.tensor(np.asarray(theirs(), dtype=np.float64))
        res[f"{name}_maxdiff"] = float((a - b).abs().max())
        res[f"{name}_mean"] = float(a.mean())
        fns[f"ours_{name}"] = (lambda fn=ours: [fn() for _ in range(reps)])
        fns[f"q_{name}"] = (lambda fn=theirs: [fn() for _ in range(reps)])
    times = interleaved(fns, rounds)
    for name in pairs:
        res[f"speedup_{name}"] = _speedup(times, f"q_{name}", f"ours_{name}")
    return res


if __name__ == "__main__":
    for key, val in bench_quantus().items():
        print(f"{key:<36} {val if not isinstance(val, float) or math.isnan(val) else round(val, 6)}")
