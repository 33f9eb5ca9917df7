"""The one campaign loop: single runs or chains, interleaved, kept, tallied.

Runs (or chains) are interleaved (iteration, then mode, then build) so that drift
of the host (thermal state, other load) hits every combination alike instead of
biasing the one that happened to run last. Each record is on disk as soon as its
run or hop ends, so an interrupted campaign still yields a partial report, and the
report is built from the records on disk, so tapmig's memory does not grow with
the hops of a soak.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from harness.campaign import store
from harness.campaign.outcome import Outcome, result_text
from harness.campaign.plan import Plan, config
from harness.campaign.shards import WHOLE
from harness.record import RunRecord
from harness.report import units
from harness.run import scenario
from harness.run.chain import Chain, ChainRun
from harness.run.config import Config
from harness.run.setup import Setup
from harness.vocabulary import Log, Mode

Emit = Callable[[RunRecord], None]
RunFn = Callable[[Config, Log, Setup | None], RunRecord]


def stderr_log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the Markdown summary."""
    print(f"tapmig: {msg}", file=sys.stderr, flush=True)


class Tally:
    """Progress: records kept, their time for the ETA, combinations skipped."""

    def __init__(self, plan: Plan, log: Log) -> None:
        self.plan, self.log, self.per_unit = plan, log, plan.hops or 1
        self.done = 0
        self.busy_s, self.timed = 0.0, 0  # a sum, not a list: a soak's memory stays flat
        self.skipped: set[tuple[str, str]] = set()
        # Records planned, less those of skipped combinations; None: until the time is up.
        self.total = None if plan.total is None else plan.total * self.per_unit
        self.since = time.monotonic()  # the start of the run or hop the next record ends

    def eta(self) -> str:
        if self.total is None or not self.timed:
            return ""
        left = max(self.total - self.done, 0)
        return f"; ETA {units.duration(self.busy_s / self.timed * left)}"

    def skip(self, i: int, mode: Mode, label: str, head: str, why: str | None) -> None:
        self.skipped.add((label, mode))
        if self.plan.hops is not None:
            self.log(f"{head} not supported, skipping its later chains: {why}")
            return
        left = self.plan.left_after(i)
        self.total = None if self.total is None else self.total - left
        self.log(f"{head} not supported, skipping its {left} remaining runs: {why}")

    def emitter(self, i: int, mode: Mode, label: str, name: str) -> Emit:
        def emit(rec: RunRecord) -> None:
            n = i if self.plan.hops is None else (i - 1) * self.per_unit + (rec.hop or 1)
            store.keep(rec, self.plan, n, name)
            self.done += 1
            if self.plan.hops is None:
                head, took = f"[{self.done}/{self.total}] #{i} {label} {mode}:", ".0f"
            else:
                head = f"[{self.done}] #{i} {label} {mode} hop {rec.hop}/{self.per_unit}:"
                took = ".2f"
            if rec.status == "unsupported":
                self.skip(i, mode, label, head, rec.error)
                return
            now = time.monotonic()
            spent = rec.duration_s if rec.duration_s is not None else now - self.since
            self.since = now
            if rec.status == "ok" or self.plan.hops is None:
                self.busy_s, self.timed = self.busy_s + spent, self.timed + 1
            self.log(f"{head} {result_text(rec)} ({spent:{took}}s){self.eta()}")
        return emit

    def interrupted(self) -> str:
        if self.plan.hops is not None:
            return f"interrupted after {self.done} hops; writing a partial report"
        return f"interrupted after {self.done} of {self.total} runs; writing a partial report"


def unit_name(plan: Plan, i: int, mode: Mode, label: str) -> str:
    """The run's (or chain's) directory under runs/, sorting in the order they ran."""
    width = 3 if plan.hops is not None else len(str(plan.iterations or 1))
    return f"{i:0{width}d}-{mode}-{label}"


def _unit(plan: Plan, setup: Setup | None, name: str, mode: Mode, label: str,
          emit: Emit, deadline: float | None, run_fn: RunFn) -> None:
    """One run, or one chain, of one combination; its chatter into its tapmig.log."""
    cfg = config(plan, mode, label, name)
    out = cfg.out or Path(".")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "tapmig.log").open("a", encoding="utf-8") as f:
        def log(msg: str) -> None:
            print(msg, file=f, flush=True)

        if plan.hops is None:
            emit(run_fn(cfg, log, setup))
            return
        shard = None if plan.shard == WHOLE else str(plan.shard)
        chain = Chain.new(cfg, plan.hops, name, deadline, shard)
        ChainRun(chain, emit, log, setup).run()


def run_campaign(plan: Plan, setups: Mapping[str, Setup], log: Log = stderr_log,
                 run_fn: RunFn = scenario.run) -> Outcome:
    """Every planned run or chain, then the report; Ctrl-C (or SIGTERM) still writes a
    partial one. A combination the build cannot run is reported once and its later
    iterations skipped; failed runs are kept, counted and do not stop the rest. run_fn
    is scenario.run, or a stand-in for tests of this loop. With
    duration_s, no chain starts, and no hop, once the time is up."""
    deadline = None if plan.duration_s is None else time.monotonic() + plan.duration_s
    started = store.begin(plan)
    tally = Tally(plan, log)
    combos = len(plan.modes) * len(plan.builds)
    interrupted = False
    try:
        for i, mode, label in plan.order():
            if ((deadline is not None and time.monotonic() >= deadline)
                    or len(tally.skipped) == combos):
                break
            if (label, mode) not in tally.skipped:
                tally.since = time.monotonic()
                name = unit_name(plan, i, mode, label)
                _unit(plan, setups.get(label), name, mode, label,
                      tally.emitter(i, mode, label, name), deadline, run_fn)
    except KeyboardInterrupt:
        interrupted = True
        log(tally.interrupted())
    records = [RunRecord.read(p) for p in sorted((plan.out / "records").glob("*.json"))]
    return store.finish(plan, records, started, interrupted)
