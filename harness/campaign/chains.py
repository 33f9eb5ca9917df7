"""A campaign of chains (`tapmig measure --chain N`): many chains, interleaved, tallied.

Each chain is a harness.run.chain.Runner; this module orders them as `measure`
orders runs, counts hops and their time for the ETA, skips combinations this
QEMU cannot run, and builds the report from the records on disk.
"""

from __future__ import annotations

import time

from harness.campaign import measure
from harness.campaign.shards import WHOLE
from harness.record import RunRecord
from harness.run.chain import Chain, Emit, Log, Runner
from harness.vocabulary import Mode

# -- a campaign of chains (tapmig measure --chain N) -----------------------------------


class Tally:
    """Progress of a campaign of chains: hops done, their times, combinations skipped."""

    def __init__(self, plan: measure.Plan, log: Log) -> None:
        assert plan.hops is not None
        self.plan, self.log, self.per_chain = plan, log, plan.hops
        self.hops = 0
        self.busy_s, self.timed = 0.0, 0  # a sum, not a list: a soak's memory stays flat
        self.skipped: set[tuple[str, str]] = set()

    def eta(self) -> str:
        if self.plan.total is None or not self.timed:
            return ""
        left = max(self.plan.total * self.per_chain - self.hops, 0)
        return f"; ETA {measure.duration_text(self.busy_s / self.timed * left)}"

    def emitter(self, i: int, mode: Mode, label: str, name: str) -> Emit:
        def emit(rec: RunRecord) -> None:
            measure.keep(rec, self.plan, (i - 1) * self.per_chain + (rec.hop or 1), name)
            self.hops += 1
            head = f"[{self.hops}] #{i} {label} {mode} hop {rec.hop}/{self.per_chain}:"
            if rec.status == "unsupported":
                self.skipped.add((label, mode))
                self.log(f"{head} not supported, skipping its later chains: {rec.error}")
                return
            if rec.duration_s is not None and rec.status == "ok":
                self.busy_s, self.timed = self.busy_s + rec.duration_s, self.timed + 1
            self.log(f"{head} {measure.result_text(rec)} ({rec.duration_s or 0:.2f}s)"
                     f"{self.eta()}")
        return emit


def measure_chains(plan: measure.Plan, log: Log = measure.stderr_log) -> measure.Outcome:
    """Chains interleaved over iteration, mode and build, as `measure` interleaves runs.

    With duration_s no chain starts, and no hop, once the time is up. The report is
    built from the records on disk, so tapmig's memory does not grow with the hops.
    """
    assert plan.hops is not None
    deadline = None if plan.duration_s is None else time.monotonic() + plan.duration_s
    started = measure.begin(plan)
    tally = Tally(plan, log)
    combos = len(plan.modes) * len(plan.builds)
    interrupted = False
    try:
        for i, mode, label in plan.order():
            if ((deadline is not None and time.monotonic() >= deadline)
                    or len(tally.skipped) == combos):
                break
            if (label, mode) in tally.skipped:
                continue
            name = f"{i:03d}-{mode}-{label}"
            cfg = measure.config(plan, mode, label, name)
            chain = Chain.new(cfg, plan.hops, name, deadline,
                              None if plan.shard == WHOLE else str(plan.shard))
            assert cfg.out is not None
            cfg.out.mkdir(parents=True, exist_ok=True)
            with (cfg.out / "tapmig.log").open("a", encoding="utf-8") as f:
                Runner(chain, tally.emitter(i, mode, label, name),
                       lambda msg: print(msg, file=f, flush=True)).run()
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted after {tally.hops} hops; writing a partial report")
    records = [RunRecord.read(p) for p in sorted((plan.out / "records").glob("*.json"))]
    return measure.finish(plan, records, started, interrupted)
