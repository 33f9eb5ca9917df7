"""What tracing the downtime checkpoints costs the figures it explains (`tapmig bench
--trace-cost`): a benchmark that prints figures, never a timed test.

Chains with and without tracing alternate, the order flipped each round, so that the
host's drift hits both arms alike. Per arm: the median ICMP blackout and QMP downtime
of the ok hops with their intervals, and the ratio traced/untraced with its interval.
Tracing may be the default only if that interval holds 1 (no difference) or stays
under 1.02 (a cost under 2 %).
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from harness.record import RunRecord
from harness.report.summary import median_ci, ratio_ci
from harness.run.chain import Chain, ChainRun
from harness.run.config import Config
from harness.run.setup import preflight
from harness.vocabulary import Log

METRICS = ("blackout_ms", "downtime_ms")
BOUND = 1.02  # a cost under 2 %


def verdict(ci: list[float] | None) -> str:
    if ci is None:
        return "too few hops for an interval"
    if ci[0] <= 1.0 <= ci[1]:
        return "the interval holds 1: no cost shown"
    if ci[1] < BOUND:
        return f"the interval stays under {BOUND:g}: a cost under 2 %"
    return f"the interval reaches {ci[1]:.3f}: tracing costs more than 2 %"


def arm_lines(name: str, traced: list[float], untraced: list[float]) -> list[str]:
    def fig(v: list[float]) -> str:
        ci = median_ci(v)
        shown = "" if ci is None else f" [{ci[0]:.1f}, {ci[1]:.1f}]"
        return f"{statistics.median(v):.1f}{shown} ms (n={len(v)})" if v else "no ok hops"

    ci = ratio_ci(traced, untraced) if traced and untraced else None
    ratio = (f"{statistics.median(traced) / statistics.median(untraced):.3f}"
             if traced and untraced and statistics.median(untraced) > 0 else "-")
    shown = "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return [f"  {name:<12} traced {fig(traced)}; untraced {fig(untraced)}",
            f"  {'':<12} traced/untraced {ratio}{shown}: {verdict(ci)}"]


def bench_trace(cfg: Config, hops: int, rounds: int, log: Log) -> list[str]:
    """`rounds` pairs of chains of `hops`, traced and untraced, interleaved."""
    setup = preflight(cfg, log)
    arms: dict[bool, list[RunRecord]] = {True: [], False: []}
    for r in range(rounds):
        for on in (True, False) if r % 2 == 0 else (False, True):
            before = len(arms[on])
            chain = Chain.new(replace(cfg, trace=on, guest=setup.guest), hops,
                              f"trace-{'on' if on else 'off'}-{r + 1}")
            ChainRun(chain, arms[on].append, lambda _msg: None, setup).run()
            ok = sum(rec.status == "ok" for rec in arms[on])
            log(f"round {r + 1}/{rounds}, tracing {'on' if on else 'off'}: {ok} ok hops")
            for rec in arms[on][before:]:
                if rec.status != "ok":
                    log(f"  hop {rec.hop}: {rec.status}: {(rec.error or '').splitlines()[0]}")
    lines = [f"tracing cost, {cfg.mode}, QEMU {setup.caps.version} ({setup.caps.qemu}): "
             f"{rounds} rounds of {hops}-hop chains per arm, {setup.accel}"]
    for metric in METRICS:
        values = {on: [float(v) for rec in recs if rec.status == "ok"
                       and (v := getattr(rec, metric)) is not None]
                  for on, recs in arms.items()}
        lines += arm_lines(metric, values[True], values[False])
    return lines
