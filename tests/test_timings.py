"""Seconds per step of a hop (harness.run.timings), from a PhaseClock's marks: pure
logic, no QEMU. Real hops' steps are checked in tests/test_chain.py."""

from __future__ import annotations

import time

import pytest

from harness.run.observer import PhaseClock
from harness.run.timings import NAMES, STEPS, hop_timings


def clock_at(**marks: float) -> PhaseClock:
    clock = PhaseClock()
    clock.marks = dict(marks)
    return clock


def test_a_whole_hop_has_every_step_in_order() -> None:
    ends = {end: 10.0 + i for i, (_, end) in enumerate(STEPS, 1)}
    got = hop_timings(clock_at(start=10.0, **ends))
    assert tuple(got) == NAMES and all(v == 1.0 for v in got.values())


def test_a_failed_hop_stops_at_the_last_mark_it_reached() -> None:
    """A target killed at switchover: `migrated` is never reached, so only settle."""
    got = hop_timings(clock_at(start=5.0, migrating=5.4, switchover=5.5))
    assert got == {"settle": pytest.approx(0.4)}


def test_a_hop_that_reached_no_step_has_none() -> None:
    assert hop_timings(clock_at(start=1.0)) == {}
    assert hop_timings(PhaseClock()) == {}


def test_a_mark_is_on_the_monotonic_clock() -> None:
    """The steps must add up to at most the hop's duration_s, which is monotonic."""
    before = time.monotonic()
    clock = PhaseClock()
    clock.start()
    clock("migrating", None)
    after = time.monotonic()
    assert before <= clock.marks["start"] <= clock.marks["migrating"] <= after
