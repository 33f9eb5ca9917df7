"""The statistics every part of a report uses: nearest-rank percentiles, and the 95%
bootstrap intervals of a median, a ratio of medians and a difference of medians.

Pure Python with a fixed seed, so the same records always give the same report; runs
of two builds or modes are not paired, so each side is resampled alone.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable

from harness.report.model import Summary

SEED = 20240601
RESAMPLES = 2000


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest sample with at least a fraction q of samples at or below it.

    Always an observed value, so p95 of a handful of runs is honestly the worst run.
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _bootstrap(sides: tuple[list[float], ...],
               combine: Callable[[list[float]], float]) -> list[float]:
    """95% percentile interval of combine(medians of each side, resampled alone)."""
    rng = random.Random(SEED)

    def draw(v: list[float]) -> float:
        return float(statistics.median(rng.choices(v, k=len(v))))

    stats = [combine([draw(side) for side in sides]) for _ in range(RESAMPLES)]
    return [percentile(stats, 0.025), percentile(stats, 0.975)]


def median_ci(values: list[float]) -> list[float] | None:
    """None below 3 samples, where resampling means nothing."""
    return _bootstrap((values,), lambda m: m[0]) if len(values) >= 3 else None


def ratio_ci(num: list[float], den: list[float]) -> list[float] | None:
    """None below 3 samples a side, or if a resampled denominator could be zero."""
    if min(len(num), len(den)) < 3 or min(den) <= 0:
        return None
    return _bootstrap((num, den), lambda m: m[0] / m[1])


def diff_ci(a: list[float], b: list[float]) -> list[float] | None:
    """The interval of median(a) - median(b); None below 3 samples a side."""
    if min(len(a), len(b)) < 3:
        return None
    return _bootstrap((a, b), lambda m: m[0] - m[1])


def summarize(values: list[float], missing: int) -> Summary:
    """`missing` counts ok runs without this figure, so gaps stay visible in the report."""
    if not values:
        return Summary(missing=missing)
    return Summary(n=len(values), missing=missing, min=min(values),
                   median=float(statistics.median(values)), p95=percentile(values, 0.95),
                   max=max(values), ci=median_ci(values))


def _poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam)."""
    if lam <= 0:
        return 1.0
    return min(1.0, sum(math.exp(i * math.log(lam) - lam - math.lgamma(i + 1))
                        for i in range(k + 1)))


def _solve(f: Callable[[float], float], target: float, hi: float) -> float:
    """The lam in [0, hi] where the decreasing f crosses target, by bisection."""
    lo = 0.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return (lo + hi) / 2


def rate_ci(total: int, runs: int) -> list[float]:
    """Exact (Garwood) 95% interval of a Poisson count's rate per run: counts of rare
    events, such as requests lost in a 20 ms window, are not normal, and a median of
    small integers (mostly 0 and 1) hides a rate that doubled."""
    hi = 10.0 * (total + 10)
    lower = 0.0 if total == 0 else _solve(lambda lam: _poisson_cdf(total - 1, lam), 0.975, hi)
    upper = _solve(lambda lam: _poisson_cdf(total, lam), 0.025, hi)
    return [round(lower / runs, 4), round(upper / runs, 4)]


def _binom_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    return min(1.0, sum(math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                                 + i * math.log(p) + (n - i) * math.log1p(-p))
                        for i in range(k, n + 1)))


def rate_test(base: int, base_runs: int, cur: int, cur_runs: int) -> tuple[float, float]:
    """One-sided exact p-values that the current rate per run is higher, and lower, than
    the baseline's: given both counts' sum, the current count is binomial with the
    current share of the runs when the rates are equal (the conditional test for two
    Poisson rates)."""
    n, share = base + cur, cur_runs / (base_runs + cur_runs)
    return _binom_tail(cur, n, share), _binom_tail(n - cur, n, 1 - share)
