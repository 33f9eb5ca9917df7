"""Seconds per step of one hop (settle, migrate ...), from the StepClock's monotonic
marks; the record keeps them as step_s.

Steps are consecutive: each runs from one mark to the next that exists, so a hop that
failed or was interrupted still shows where its time went up to that point.
"""

from __future__ import annotations

from harness.run.observer import StepClock

# (step, the mark that ends it), in the order a hop reaches them. "switchover" is
# reached only with pause_before_switchover, so it is not a step boundary.
# settle runs from the hop's start to `migrate`: the probes start, the target starts
# inside the settle time, and the source's queue counters are read.
STEPS = (("settle", "migrating"), ("migrate", "migrated"),
         ("switch_host", "resuming"), ("cont", "resumed"), ("tail", "analysed"),
         ("verify", "verified"), ("sample", "sampled"))
NAMES = tuple(step for step, _ in STEPS)


def step_seconds(clock: StepClock) -> dict[str, float]:
    """settle, migrate, switch_host, cont, tail, verify, sample: as many as the hop got
    to."""
    marks = clock.marks
    last = marks.get("started")
    out: dict[str, float] = {}
    if last is None:
        return out
    for step, end in STEPS:
        at = marks.get(end)
        if at is None:
            break
        out[step], last = round(max(at - last, 0.0), 4), at
    return out
