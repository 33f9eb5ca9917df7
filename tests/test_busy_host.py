"""Verdicts on a busy host: real CPU hogs beside real hops of a shared guest.

A fresh TCG target under load answers late because the host is busy, not because the
migration broke; the window's epsilon follows the noise the probes saw before the
migration, with the accelerator's figure as the floor, and the record says which was
used and why. A real fault must still fail under the same load. The hogs are this
test's own processes, killed by PID.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.analysis.noise import NOISE_FACTOR, Calibration
from harness.run.config import EPSILON_MS
from tests.support.shared import Hopper, Key, SharedGuest, on
from tests.test_traffic import reset_from_host

pytestmark = pytest.mark.kvm


@contextmanager
def hogs(n: int) -> Iterator[None]:
    """n busy loops, as `python3 -c 'while True: pass'` beside a CI job."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


@on(Key("new-tap", queues=1))
def test_a_hop_beside_hogs_records_the_epsilon_it_used_and_why(booted: SharedGuest,
                                                                 hop: Hopper) -> None:
    with hogs(2):
        rec = hop(flows=8, tcp="sparse")
    # Never a false failure of the window: ok, or inconclusive naming the noise.
    assert rec.status in ("ok", "inconclusive"), rec.error
    assert rec.calibration is not None
    cal = Calibration.from_json(rec.calibration)
    assert cal.floor_ms == EPSILON_MS[booted.setup.accel]
    assert rec.epsilon_ms == cal.epsilon_ms
    # Justified: the largest noise figure before the migration, times the factor, or
    # the floor where that is smaller; both are in the record.
    assert cal.figure is not None and cal.figure_ms is not None
    assert cal.epsilon_ms == max(cal.floor_ms, round(NOISE_FACTOR * cal.figure_ms, 1))
    assert cal.used == ("noise" if cal.epsilon_ms > cal.floor_ms else "floor")
    assert cal.noise.icmp_replies > 100 and (cal.noise.flow_replies or 0) > 0
    if rec.status == "inconclusive":
        assert rec.failure is not None and rec.failure["kind"] == "Inconclusive"
        assert rec.failure["figure"] == cal.figure and not cal.judgeable


@on(Key("new-tap", queues=1))
def test_a_real_fault_under_the_same_load_still_fails(hop: Hopper) -> None:
    with hogs(4):
        rec = hop([reset_from_host], flows=0, tcp="continuous")
    assert rec.status == "failed" and rec.failure is not None, rec.error
    assert rec.failure["check"] == "tcp", rec.failure
