"""Leaks and drift along a chain: is a per-hop figure growing, and is that more than noise?

The slope is Theil-Sen's (the median of all pairwise slopes), which a few slow TCG hops
cannot drag; its 95% interval is Sen's, from the distribution of Kendall's S with the
tie correction (Gilbert 1987, ch. 16), so it needs no resampling and the same hops
always give the same answer. Counters (fds, queues, interfaces) must be flat: any
sustained rise is a leak. Memory and downtime are noisy, so they are flagged only when
the interval excludes zero and the fitted change is large enough to matter; memory is
judged on the second half of the chain, after its warm-up. Each finding carries its
Theil-Sen intercept and the hops it was fitted on, so a report can draw the fitted line
over exactly the points the verdict rests on; `shown` gives the whole series, thinned.
Each phase of the blackout drifts or not on its own (phase_findings), so that a chain
whose blackout creeps up says where: before STOP, in QEMU, or in the harness.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from harness.analysis.downtime import PHASES, RESIDUAL, Breakdown
from harness.record import RunRecord

Z95 = 1.959963984540054
MAX_POINTS = 2000  # above this the series is thinned evenly: 2M pairwise slopes, ~1 s
SHOWN_POINTS = 200  # hops of a chain's series kept in report.json: enough to see a trend
MIN_TREND = 10  # fewer hops than this: a slope is reported, but said to rest on too little
RSS_LEAK_KIB = 2048  # fitted growth over a chain's second half below this is allocator noise
DRIFT_FRACTION = 0.10  # fitted downtime change over a chain, as a fraction of its median

COUNTERS = ("qemu_fds", "qemu_tun_fds", "tap_queues_attached", "tap_queues_disabled",
            "interfaces", "tapmig_fds")
MEMORY = ("qemu_anon_kib", "tapmig_rss_kib", "tapmig_heap_kib")
DRIFTS = ("blackout_ms", "downtime_ms")
UNITS = {"qemu_anon_kib": "KiB", "tapmig_rss_kib": "KiB", "tapmig_heap_kib": "KiB",
         "blackout_ms": "ms", "downtime_ms": "ms"}  # the rest are counts, but for the phases (ms)
# Each phase of the blackout (harness.analysis.downtime), as "phase:<name>": judged by
# the drift rule, but flagged only from a fitted change of a millisecond, the probe's
# resolution: a phase of 30 µs that doubles is no drift of the blackout.
PHASE = "phase:"
PHASE_DRIFT_FLOOR_MS = 1.0

T = TypeVar("T")
# What a finding judges: a leak (a figure that must not grow) or drift (one that may
# wander, but not steadily). A flagged leak fails a campaign; drift is reported.
Kind = Literal["leak", "drift"]


@dataclass(frozen=True)
class Slope:
    """Change per hop, with its 95% interval (None when n is too small to have one), and
    the intercept that puts the fitted line through the points: y = per_hop * x + intercept."""

    per_hop: float
    ci: tuple[float, float] | None
    n: int
    intercept: float = 0.0


def _thin(points: list[T], limit: int = MAX_POINTS) -> list[T]:
    """Evenly spaced, keeping the first and the last, so the span of the series stays."""
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(k * step)] for k in range(limit)]


def _var_s(n: int, ys: Sequence[float]) -> float:
    """Variance of Kendall's S under no trend, corrected for tied values."""
    ties = sum(t * (t - 1) * (2 * t + 5) for t in Counter(ys).values() if t > 1)
    return (n * (n - 1) * (2 * n + 5) - ties) / 18


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> Slope | None:
    """None below two points; the interval is None where Sen's ranks fall off the ends."""
    points = _thin(sorted(zip(xs, ys, strict=True)))
    n = len(points)
    if len({x for x, _ in points}) < 2:
        return None
    if len({y for _, y in points}) == 1:  # flat: every pairwise slope is zero
        return Slope(0.0, (0.0, 0.0), n, points[0][1])
    slopes = sorted((y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points)
                    for x2, y2 in points[i + 1:] if x2 != x1)
    c = Z95 * math.sqrt(_var_s(n, [y for _, y in points]))
    lo, hi = math.ceil((len(slopes) - c) / 2) - 1, math.floor((len(slopes) + c) / 2)
    ci = (slopes[lo], slopes[hi]) if lo >= 0 and hi < len(slopes) else None
    per_hop = float(statistics.median(slopes))
    # Theil-Sen's intercept: the median residual of the fitted points, robust as the slope.
    intercept = float(statistics.median(y - per_hop * x for x, y in points))
    return Slope(per_hop, ci, n, intercept)


@dataclass(frozen=True)
class Finding:
    """One figure along one chain, and whether it is flagged (as a leak or as drift)."""

    metric: str
    kind: Kind
    n: int
    first: float
    last: float
    median: float
    per_hop: float | None
    ci: tuple[float, float] | None
    flagged: bool
    note: str
    # The fitted line, y = per_hop * hop + intercept, over the hops it was judged on
    # (first, last); None where there is no slope, and in reports written before them.
    intercept: float | None = None
    fit_hops: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Rule = Callable[[Slope, list[float]], tuple[bool, str]]


def _counter_rule(slope: Slope, ys: list[float]) -> tuple[bool, str]:
    if slope.ci is not None:
        grows = slope.ci[0] > 0
        return grows, "rises steadily: a leak" if grows else "flat"
    grew = ys[-1] > ys[0]
    return grew, ("grew, but too few hops to tell a leak from a one-off step" if grew
                  else "did not grow (too few hops for a trend)")


def _memory_rule(slope: Slope, ys: list[float]) -> tuple[bool, str]:
    growth = slope.per_hop * (len(ys) - 1)
    if slope.ci is None:
        return False, "too few hops for a trend"
    leak = slope.ci[0] > 0 and growth >= RSS_LEAK_KIB
    return leak, (f"fitted growth {growth:+.0f} KiB over its second half"
                  + (": a leak" if leak else f" (flagged from {RSS_LEAK_KIB} KiB)"))


def _drift(slope: Slope, ys: list[float], floor: float) -> tuple[bool, str]:
    change = slope.per_hop * (len(ys) - 1)
    if slope.ci is None:
        return False, "too few hops for a trend"
    limit = max(DRIFT_FRACTION * abs(statistics.median(ys)), floor)
    drifts = (slope.ci[0] > 0 or slope.ci[1] < 0) and abs(change) >= limit
    way = "drifts up" if change > 0 else "drifts down"
    return drifts, (f"fitted change {change:+.1f} over the chain"
                    + (f": {way}" if drifts else f" (flagged from ±{limit:.1f}, with a "
                       "95% interval that excludes 0)"))


def _drift_rule(slope: Slope, ys: list[float]) -> tuple[bool, str]:
    return _drift(slope, ys, 0.0)


def _phase_rule(slope: Slope, ys: list[float]) -> tuple[bool, str]:
    return _drift(slope, ys, PHASE_DRIFT_FLOOR_MS)


def unit(metric: str) -> str:
    """The figure's unit; "" for a count."""
    return "ms" if metric.startswith(PHASE) else UNITS.get(metric, "")


def judge(metric: str, kind: Kind, hops: list[int], ys: list[float], rule: Rule) -> Finding:
    slope = theil_sen(hops, ys)
    if slope is None:
        return Finding(metric, kind, len(ys), ys[0], ys[-1], ys[0], None, None, False,
                       "one hop: no trend")
    flagged, note = rule(slope, ys)
    if len(ys) < MIN_TREND:
        note += f"; n={len(ys)} < {MIN_TREND} hops: too small a sample to rely on"
    return Finding(metric, kind, len(ys), ys[0], ys[-1], float(statistics.median(ys)),
                   slope.per_hop, slope.ci, flagged, note, slope.intercept, (hops[0], hops[-1]))


def series(rec: RunRecord) -> dict[str, float]:
    """The per-hop figures of one record that trends are judged on."""
    out: dict[str, float] = {}
    fp = rec.footprint or {}
    if fp:
        queues = fp.get("tap_queues", {}).values()
        out |= {"qemu_fds": fp["qemu_fds"], "qemu_tun_fds": fp["qemu_tun_fds"],
                "tap_queues_attached": sum(q[0] for q in queues),
                "tap_queues_disabled": sum(q[1] for q in queues),
                "interfaces": len(fp["interfaces"]), "qemu_anon_kib": fp["qemu_anon_kib"],
                "tapmig_rss_kib": fp["tapmig_rss_kib"]}
        for late in ("tapmig_fds", "tapmig_heap_kib"):  # older records lack them
            if fp.get(late) is not None:
                out[late] = fp[late]
    for metric in DRIFTS:
        if (v := getattr(rec, metric)) is not None:
            out[metric] = float(v)
    return out


def hop_rows(recs: list[RunRecord]) -> list[tuple[int, dict[str, float]]]:
    """(hop, figures) of one chain's ok hops, in hop order: what trends are judged on."""
    ok = sorted((r for r in recs if r.status == "ok" and r.hop is not None),
                key=lambda r: r.hop or 0)
    return [(r.hop or 0, series(r)) for r in ok]


def shown(recs: list[RunRecord]) -> dict[str, list[Any]]:
    """The whole series of every tracked figure against the hop, for a picture: columns
    "hop" and one per figure (None where a hop lacks it), thinned to SHOWN_POINTS hops."""
    rows = _thin(hop_rows(recs), SHOWN_POINTS)
    out: dict[str, list[Any]] = {"hop": [hop for hop, _ in rows]}
    for metric in COUNTERS + MEMORY + DRIFTS:
        if any(metric in s for _, s in rows):
            out[metric] = [s.get(metric) for _, s in rows]
    return out


def findings(recs: list[RunRecord]) -> list[Finding]:
    """Every tracked figure of one chain's ok hops, in hop order."""
    rows = hop_rows(recs)
    out = []
    rules: tuple[tuple[tuple[str, ...], Kind, Rule], ...] = (
        (COUNTERS, "leak", _counter_rule), (MEMORY, "leak", _memory_rule),
        (DRIFTS, "drift", _drift_rule))
    for metrics, kind, rule in rules:
        for metric in metrics:
            pts = [(hop, s[metric]) for hop, s in rows if metric in s]
            if metrics is MEMORY:
                # Memory climbs over the first tens of hops as allocators, caches and
                # lazily imported code warm up, then levels off; a leak keeps climbing,
                # so it is judged on the second half of the chain.
                pts = pts[len(pts) // 2:]
            if pts:
                out.append(judge(metric, kind, [h for h, _ in pts], [y for _, y in pts], rule))
    return out


def phase_series(rec: RunRecord) -> dict[str, float]:
    """ms per phase of the record's ICMP hole, by "phase:<name>"; none without one."""
    bd = Breakdown.from_json(rec.downtime_breakdown)
    return {} if bd is None or not bd.phases else {
        PHASE + name: ms for name, ms in bd.phase_ms().items()}


def phase_findings(recs: list[RunRecord]) -> list[Finding]:
    """The drift of each phase of the blackout along one chain's ok hops, in phase order;
    a phase only some hops have is judged on those."""
    ok = sorted((r for r in recs if r.status == "ok" and r.hop is not None),
                key=lambda r: r.hop or 0)
    rows = [(r.hop or 0, phase_series(r)) for r in ok]
    out = []
    for name in (*PHASES, RESIDUAL):
        pts = [(hop, s[PHASE + name]) for hop, s in rows if PHASE + name in s]
        if pts:
            out.append(judge(PHASE + name, "drift", [h for h, _ in pts], [y for _, y in pts],
                             _phase_rule))
    return out
