"""Real migrations of a real guest: new-TAP and local, every variant, on each --qemu.

Each variant migrates a guest under QEMU (KVM where it works, TCG otherwise) with
a 1 kHz prober running across the migration, and checks the record against
evidence the harness did not compute: the saved ping log, read here with a parser
of the test's own, and the physics of a stopped guest (no reply can come from it
between STOP and RESUME). The harness's own check that the outage lies in
[STOP - eps, RESUME + eps] is what status "ok" means, so it is not repeated here.

Every mode x queues pair runs with vhost off, as a hop of the shared guest of that
mode and queue count (tests/support/shared.py): the queue count and the mode are
fixed at boot, the migration is what is tested. vhost=on, which a host has or has
not (/dev/vhost-net), runs pairwise: each mode and each queue count once with it,
each a whole run of its own.
"""

from __future__ import annotations

import re
import time
from itertools import pairwise
from pathlib import Path

import pytest

from harness.guest.spec import Guest
from harness.qemu.capabilities import Capabilities
from harness.record import RunRecord
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Moment
from harness.testing.plugin import RunFactory
from harness.vocabulary import AccelChoice, Mode
from tests.support import skip_unless_local
from tests.support.shared import Hopper, Key, SharedGuest, on

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("tapmig_root_with_tun")]

# A reply line of `ping -D` (tapmig's prober prints the same); the anchor at the end
# leaves out duplicates, which end in "(DUP!)".
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=\d+ .*time=[\d.]+ ms$")


def reply_times(log: Path) -> list[float]:
    """When each reply arrived (the kernel's receive timestamp), in log order."""
    return [float(m[1]) for line in log.read_text().splitlines()
            if (m := REPLY.match(line))]


def longest_hole(times: list[float], stop: float, resume: float) -> tuple[float, float]:
    """The longest gap between consecutive replies that overlaps [stop, resume]."""
    holes = [(a, b) for a, b in pairwise(times) if a <= resume and b >= stop]
    assert holes, "no replies on both sides of the migration"
    return max(holes, key=lambda h: h[1] - h[0])


class Clock:
    """A fault hook that only notes the wall-clock time at which the prober was running
    and the migration had not begun."""

    def __init__(self) -> None:
        self.probing: float | None = None

    def __call__(self, phase: Moment, _lab: Lab, _result: object) -> None:
        if phase == "probing":
            self.probing = time.time()


def check_against_the_log(rec: RunRecord, log: Path, probing: float, ended: float) -> None:
    assert rec.stop_ts is not None and rec.resume_ts is not None
    # QEMU's event timestamps and the kernel's receive timestamps share the wall clock:
    # STOP came after the prober was running, RESUME before the run returned.
    assert probing < rec.stop_ts < rec.resume_ts < ended
    times = reply_times(log)
    assert times[0] < rec.stop_ts and times[-1] > rec.resume_ts, "the log misses the window"
    # No reply from a stopped guest: QEMU sends STOP after the source's vCPUs and
    # devices stopped, and RESUME before the target's start.
    inside = [t for t in times if rec.stop_ts < t < rec.resume_ts]
    assert inside == [], f"replies between STOP and RESUME: {inside[:5]}"
    # The record's blackout is the log's longest hole around the migration.
    start, end = longest_hole(times, rec.stop_ts, rec.resume_ts)
    assert (rec.blackout_start, rec.blackout_end) == (start, end)
    assert rec.blackout_ms == pytest.approx(1000 * (end - start), abs=0.001)


def check_run(rec: RunRecord, mode: Mode, queues: int, vhost: bool, out: Path,
              clock: Clock, ended: float) -> None:
    assert rec.status == "ok", rec.error
    assert (rec.mode, rec.queues, rec.vhost) == (mode, queues, vhost)
    assert rec.artifacts["ping"] == "ping.log"
    assert clock.probing is not None
    check_against_the_log(rec, out / "ping.log", clock.probing, ended)
    assert rec.lost is not None and rec.downtime_ms is not None
    if mode == "local":
        # Nothing switched on the host: the same tap0, still carrying traffic.
        before, after = rec.checks["tap0_ifindex"]
        assert before == after
        rx, tx = rec.checks["tap0_rx_packets"], rec.checks["tap0_tx_packets"]
        assert rx[1] > rx[0] and tx[1] > tx[0]
    # Every queue of the netdev: local hands the source's own open file over, new-TAP
    # opens a new one on the other TAP (the kernel's kcmp said which).
    handover = rec.checks["handover"]
    expected = ("handed", True) if mode == "local" else ("new", False)
    assert [(q["found"], q["same_file"]) for q in handover["queues"]] == [expected] * queues
    assert {q["tap"] for q in handover["queues"]} == {handover["target_tap"]}
    assert (handover["source_tap"] == handover["target_tap"]) == (mode == "local")


@on(Key("new-tap", queues=1), Key("new-tap", queues=4), Key("local", queues=1),
    Key("local", queues=4))
def test_migration_keeps_network(booted: SharedGuest, hop: Hopper, tmp_path: Path) -> None:
    clock = Clock()
    rec = hop([clock], out=tmp_path)
    check_run(rec, booted.key.mode, booted.key.queues, False, tmp_path, clock, time.time())


@pytest.mark.parametrize(("mode", "queues"), [("new-tap", 4), ("local", 1)],
                         ids=["new-tap-q4", "local-q1"])
def test_migration_keeps_network_with_vhost(
        tapmig_run: RunFactory, tapmig_qemu: str, tapmig_capabilities: Capabilities,
        tapmig_guest: Guest, tapmig_accel: AccelChoice, mode: Mode, queues: int,
        tmp_path: Path) -> None:
    skip_unless_local(tapmig_capabilities, mode)
    if tapmig_capabilities.vhost_problem:  # really absent on this host: nothing to fix
        pytest.skip(f"vhost=on needs vhost-net: {tapmig_capabilities.vhost_problem}")
    clock = Clock()
    rec = tapmig_run(Config(qemu=tapmig_qemu, mode=mode, vhost=True, queues=queues,
                            accel=tapmig_accel, guest=tapmig_guest, out=tmp_path),
                     observers=[clock])
    check_run(rec, mode, queues, True, tmp_path, clock, time.time())


@on(Key("new-tap", queues=1))
def test_iputils_prober_is_recorded_and_used(hop: Hopper, tmp_path: Path) -> None:
    """Config.prober reaches the record, not a fixed "tapmig", and the log is
    iputils' own: it has none of the "sent" lines tapmig's prober writes."""
    rec = hop(prober="iputils", out=tmp_path)
    assert rec.status == "ok", rec.error
    assert rec.prober == "iputils"
    log = (tmp_path / "ping.log").read_text()
    assert reply_times(tmp_path / "ping.log")
    assert " sent icmp_seq=" not in log


@pytest.mark.qemu_independent
def test_guest_that_never_boots_fails_cleanly(tapmig_run: RunFactory, tapmig_qemu: str,
                                              tapmig_guest: Guest, tapmig_accel: AccelChoice,
                                              tmp_path: Path) -> None:
    """A garbage initrd makes the kernel panic, and panic=-1 with -no-reboot makes QEMU
    exit: the run must see that exit (not wait out the boot timeout), say so with the
    console's last words, and leak nothing (the autouse leak check)."""
    bad = tmp_path / "garbage-initrd"
    bad.write_bytes(b"not an initramfs" * 1000)
    broken = Guest(name="broken", kernel=tapmig_guest.kernel, initrd=bad)
    rec = tapmig_run(Config(qemu=tapmig_qemu, accel=tapmig_accel, guest=broken,
                            boot_timeout=60, out=tmp_path / "out"))
    assert rec.status == "failed"
    assert rec.failure is not None and rec.error is not None
    assert (rec.failure["kind"], rec.failure["side"]) == ("QEMUError", "source")
    assert rec.failure["exit_status"] == 0  # the guest's reboot, under -no-reboot
    assert rec.failure["console_tail"]
    assert rec.failure["console_tail"] in rec.error  # the reason is in the message too
