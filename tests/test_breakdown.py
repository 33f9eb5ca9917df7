"""Where the blackout goes, on real hops of a shared guest.

The breakdown of a hop is read from both QEMUs' real trace files and the hop's own
marks. On the built QEMU (vmstate_downtime events) its phases must each be >= 0, add
up to the ICMP blackout, name virtio-net among the target's loaded devices, and have a
host switch in new-TAP mode only; on Debian's 7.2 it must say what is missing. A delay
injected for real between migration completed and `cont` must land in the harness's
own phase, not in QEMU's, and not in the residual.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.analysis.downtime import Breakdown
from harness.record import RunRecord
from harness.run.lab import Lab
from harness.run.observer import Moment
from tests.support.shared import Hopper, Key, SharedGuest, on

pytestmark = pytest.mark.kvm

QEMU_PHASES = ("src_stop", "ram", "devices_saved", "transfer_and_load")
DELAY_S = 0.3  # what the observer holds the target for, far above the probe's 1 ms


def split(rec: RunRecord) -> Breakdown:
    assert rec.status == "ok", rec.error
    bd = Breakdown.from_json(rec.downtime_breakdown)
    assert bd is not None, "the hop recorded no breakdown"
    return bd


def traced(booted: SharedGuest) -> bool:
    """The QEMU writes the vmstate_downtime checkpoints (the built one does)."""
    return any(p.startswith("vmstate_downtime") for p in booted.setup.caps.trace)


@on(Key("new-tap", queues=4), Key("local", queues=4))
def test_the_phases_add_up_to_the_blackout(booted: SharedGuest, hop: Hopper) -> None:
    rec = hop()
    bd = split(rec)
    ms = bd.phase_ms()
    assert all(p.us >= 0 for p in bd.phases), bd.phases
    # Integer µs between consecutive boundaries: exactly the hole, whose ends are the
    # replies the ICMP blackout is measured between (to the record's 1 µs rounding).
    assert sum(p.us for p in bd.phases) == round(bd.hole[1] * 1e6) - round(bd.hole[0] * 1e6)
    assert rec.blackout_ms is not None and abs(bd.blackout_ms - rec.blackout_ms) < 0.002
    assert ("host_switch" in ms) == (booted.key.mode == "new-tap")
    assert ms["cont_to_resume"] > 0 and "guest_warmup" in ms and "harness_qmp" in ms
    if not traced(booted):  # Debian's 7.2: what its events allow, and what they do not
        assert bd.missing is not None and "has no vmstate_downtime trace events" in bd.missing
        assert bd.events in ("savevm_state", "none")
        return
    assert bd.available and bd.missing is None and not bd.problems
    assert bd.events == "vmstate_downtime" and ms["residual"] == 0
    assert all(name in ms for name in QEMU_PHASES)
    loaded = next(p for p in bd.phases if p.name == "transfer_and_load")
    assert any(d.idstr.endswith("/virtio-net") for d in loaded.devices), loaded.devices
    assert bd.virtio_net_load_ms is not None and bd.virtio_net_save_ms is not None
    flow = Breakdown.from_json(rec.flow_breakdown)  # no flows asked for: no worst flow
    assert flow is None


class HoldTarget:
    """Between migration completed and the host switch: SIGSTOP the target QEMU for
    DELAY_S, then SIGCONT. A real stall of a real process, in the harness's time."""

    def __init__(self) -> None:
        self.held: float | None = None

    def __call__(self, phase: Moment, lab: Lab, _result: object) -> None:
        if phase != "migrated" or lab.target is None or lab.target.pid is None:
            return
        pid, t0 = lab.target.pid, time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(DELAY_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.held = time.monotonic() - t0


@on(Key("new-tap", queues=1))
def test_a_delay_before_cont_lands_in_the_harness_phase(booted: SharedGuest,
                                                        hop: Hopper) -> None:
    plain = split(hop()).phase_ms()
    hold = HoldTarget()
    held = split(hop([hold])).phase_ms()
    assert hold.held is not None and hold.held >= DELAY_S
    grown = {name: held.get(name, 0.0) - plain.get(name, 0.0) for name in held}
    # The whole delay is in harness_qmp: grown by the hold, give or take the noise of
    # one TCG hop's harness steps (a few ms here); the residual stays 0 when traced.
    assert 1000 * hold.held - 5 <= grown["harness_qmp"] <= 1000 * hold.held + 60, grown
    others = {n: d for n, d in grown.items() if n not in ("harness_qmp", "guest_warmup")}
    # Phases before the hold cannot have grown by it; those after it (the host switch,
    # cont -> RESUME) are not where it went. guest_warmup, RESUME to the first reply, is
    # the guest's own and varies by tens of ms under TCG, so it is left out.
    assert all(d < 0.5 * 1000 * DELAY_S for d in others.values()), grown
