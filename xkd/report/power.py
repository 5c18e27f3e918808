"""How many seeds a paired comparison needs, and what a given number of seeds can detect.

For paired differences d_s (s = 1..n seeds) with standard deviation σ_d:

* the 95 % t-interval has half-width t_{0.975, n−1} · σ_d / √n; :func:`seeds_for_halfwidth` is the
  smallest n that brings it to a target (e.g. 2 accuracy points);
* the two-sided paired t-test at level α has power P(|T| > t_{1−α/2, n−1}) with T noncentral t
  (df n − 1, noncentrality δ√n/σ_d); :func:`min_detectable` is the smallest δ with power ≥ 0.8
  (the noncentral t, solved with brentq).
"""

from __future__ import annotations

import math

from scipy import integrate, optimize
from scipy import stats as sps


def halfwidth(sd: float, n: int, level: float = 0.95) -> float:
    """Half-width of the paired t-interval for ``n`` seeds."""
    return float(sps.t.ppf(0.5 + level / 2, df=n - 1)) * sd / math.sqrt(n)


def seeds_for_halfwidth(sd: float, target: float, level: float = 0.95, n_max: int = 1000) -> int:
    """Smallest n ≥ 2 whose paired t-interval half-width is at most ``target``."""
    if sd <= 0:
        return 2
    for n in range(2, n_max + 1):
        if halfwidth(sd, n, level) <= target:
            return n
    return n_max


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test (n pairs) to detect a true mean difference ``delta``:
    P(|Z + λ| > c·√(V/ν)) with Z ~ N(0,1), V ~ χ²_ν, ν = n − 1, λ = δ√n/σ_d, c = t_{1−α/2,ν} (the
    noncentral t, integrated over V with scipy.integrate.quad; scipy's nct tail is unstable
    for ν = 1)."""
    df = n - 1
    crit = float(sps.t.ppf(1 - alpha / 2, df))
    nc = delta * math.sqrt(n) / sd

    def given_v(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return (sps.norm.sf(c - nc) + sps.norm.cdf(-c - nc)) * sps.chi2.pdf(v, df)

    return float(integrate.quad(given_v, 0, math.inf, limit=200)[0])


def min_detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true paired difference the test detects with probability ``power`` (n ≥ 2)."""
    if n < 2 or not sd > 0:
        return math.nan
    hi = sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-10))
