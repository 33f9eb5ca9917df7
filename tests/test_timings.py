"""Seconds per step of a hop (harness.run.timings), from a StepClock's marks: pure
logic, no QEMU. Real hops' steps are checked in tests/test_chain.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from harness.record import RunRecord
from harness.run.observer import StepClock
from harness.run.timings import NAMES, STEPS, step_seconds


def clock_at(**marks: float) -> StepClock:
    clock = StepClock()
    clock.marks = dict(marks)
    return clock


def test_a_whole_hop_has_every_step_in_order() -> None:
    ends = {end: 10.0 + i for i, (_, end) in enumerate(STEPS, 1)}
    got = step_seconds(clock_at(started=10.0, **ends))
    assert tuple(got) == NAMES and all(v == 1.0 for v in got.values())


def test_a_failed_hop_stops_at_the_last_mark_it_reached() -> None:
    """A target killed at switchover: `migrated` is never reached, so only settle."""
    got = step_seconds(clock_at(started=5.0, migrating=5.4, switchover=5.5))
    assert got == {"settle": pytest.approx(0.4)}


def test_a_hop_that_reached_no_step_has_none() -> None:
    assert step_seconds(clock_at(started=1.0)) == {}
    assert step_seconds(StepClock()) == {}


def test_a_mark_is_on_the_monotonic_clock() -> None:
    """The steps must add up to at most the hop's duration_s, which is monotonic."""
    before = time.monotonic()
    clock = StepClock()
    clock("resumed", None)
    clock("started", None)  # a new hop forgets the last one's marks
    clock("migrating", None)
    after = time.monotonic()
    assert list(clock.marks) == ["started", "migrating"]
    assert before <= clock.marks["started"] <= clock.marks["migrating"] <= after


def test_a_record_written_when_step_timings_were_called_phases_still_loads_them() -> None:
    """A real local hop's record (tests/data/handover), written with the key "phases"."""
    path = Path(__file__).parent / "data" / "handover" / "local-record.json"
    data = json.loads(path.read_text())
    rec = RunRecord.read(path)
    assert rec.step_s == data["phases"] and tuple(rec.step_s) == NAMES[:len(rec.step_s)]
    assert "phases" not in rec.to_json() and rec.to_json()["step_s"] == data["phases"]
