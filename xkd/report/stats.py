"""Summary statistics of the report: bootstrap CIs of per-sample metrics, t-intervals over seeds.

- Per-sample metric values (reference/xai_metrics.md §0.3 (9)): mean over the non-NaN samples,
  95 % percentile-bootstrap CI of that mean (Efron and Tibshirani 1993, ch. 13) from
  ``n_boot`` resamples drawn by ``numpy.random.default_rng(seed)`` (a fresh generator per row,
  so a row's CI does not depend on which other rows were computed), N and the NaN count.
- Multi-seed paired differences: for seeds s = 1..n, ``d_s = v_student,s - v_baseline,s``;
  ``mean(d) +- t_{0.975, n-1} * sd(d) / sqrt(n)`` with the sample standard deviation (ddof 1)
  and Student's t quantile from ``scipy.stats.t`` (undefined, NaN, for n < 2).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats as sps

BOOTSTRAP_SEED = 0
"""Seed of every bootstrap generator (recorded in aggregates.json)."""


def bootstrap_summary(values: Sequence[float] | np.ndarray, n_boot: int = 1000,
                      seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> dict[str, Any]:
    """``{mean, ci_low, ci_high, n, n_nan, std}`` of per-sample ``values`` (NaN ignored).

    ``n`` counts the valid (non-NaN) samples. With no valid sample every statistic is NaN; with one
    the CI collapses onto the value.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    ok = v[~np.isnan(v)]
    out: dict[str, Any] = {"n": int(ok.size), "n_nan": int(v.size - ok.size)}
    if ok.size == 0:
        return {**out, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "std": math.nan}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ok.size, size=(n_boot, ok.size))
    means = ok[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    std = float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    return {**out, "mean": float(ok.mean()), "ci_low": float(lo), "ci_high": float(hi), "std": std}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) over non-NaN values."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def paired_difference(values: Sequence[float], baseline: Sequence[float],
                      level: float = 0.95) -> dict[str, Any]:
    """Mean paired difference ``values - baseline`` over seeds with a Student-t interval.

    Pairs where either side is missing (None/NaN) are dropped. Returns ``{mean, ci_low,
    ci_high, sd, n, t}``.
    """
    pairs = [(float(a), float(b)) for a, b in zip(values, baseline)
             if a is not None and b is not None and not (math.isnan(float(a)) or math.isnan(float(b)))]
    d = np.asarray([a - b for a, b in pairs], dtype=np.float64)
    n = int(d.size)
    if n == 0:
        return {"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "sd": math.nan, "n": 0,
                "t": math.nan}
    m = float(d.mean())
    if n < 2:
        return {"mean": m, "ci_low": math.nan, "ci_high": math.nan, "sd": math.nan, "n": n,
                "t": math.nan}
    sd = float(d.std(ddof=1))
    t = float(sps.t.ppf(0.5 + level / 2.0, df=n - 1))
    half = t * sd / math.sqrt(n)
    return {"mean": m, "ci_low": m - half, "ci_high": m + half, "sd": sd, "n": n, "t": t}
