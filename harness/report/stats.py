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
