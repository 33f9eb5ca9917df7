"""Faults struck at a real migration, and what the harness and QEMU make of them.

Each case runs real QEMU processes and kills, stops or starves one piece at a
fixed phase, through an observer of the run; "switchover" is the migration held
at pre-switchover (Config.pause_before_switchover). The run must end with an error
whose attributes name the side and QEMU's own words.

A fault the guest survives (the target killed or refused, a cancel, the prober
killed) strikes a hop of the shared guest (tests/support/shared.py): the hop's
record is what `tapmig run` would record, and the lab is left as the fault left
it, so that the test then checks that the source still serves, as QEMU promises.
The source killed, or a QEMU frozen, ends that guest (spends it: it runs last of
its guest's tests). Faults that strike before a guest runs are whole runs. What
QEMU decides runs on each --qemu;
what only the harness decides (a timeout, a dead prober, no room) runs once.
The autouse leak check proves nothing is left. Each test prints
"fault-detection <case> <seconds>": the time from the fault to the harness's
verdict (for a whole run, until it returned, teardown included).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.guest.spec import Guest
from harness.qemu.vm import VM
from harness.record import RunRecord
from harness.run import steps
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Moment
from harness.testing.plugin import RunFactory
from harness.vocabulary import AccelChoice
from tests.support import children, cmdline
from tests.support.shared import Hopper, Key, SharedGuest, on

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("tapmig_root_with_tun")]
ONE_QUEUE = on(Key("new-tap", queues=1))

# Generous next to a TCG boot (5-10 s) and a migration (well under 1 s).
BOOT_TIMEOUT = 60.0
MIGRATE_TIMEOUT = 30.0
# Where a timeout is the only thing that can notice a fault, the run must end by
# that timeout and not hang: that bound is the point of those tests. The slack
# covers the teardown of a frozen QEMU on a loaded 2-core TCG host.
HANG_SLACK_S = 20.0


def report(case: str, seconds: float) -> None:
    print(f"fault-detection {case} {seconds:.3f}")


class Fault:
    """A fault hook that strikes once, at one phase, and remembers when, and the names
    of the source and target QEMUs then. A QEMUError's side is the name of the QEMU it
    is about: "source" and "target" in a run, and on a guest that already hopped the
    source is the target of an earlier hop ("target-3")."""

    def __init__(self, phase: Moment, strike: Callable[[Lab], Any]) -> None:
        self.phase = phase
        self.strike = strike
        self.at: float | None = None
        self.source = self.target = ""

    def __call__(self, phase: Moment, lab: Lab, _result: object) -> None:
        if phase == self.phase:
            self.at = time.monotonic()
            self.source = lab.source.name if lab.source is not None else ""
            self.target = lab.target.name if lab.target is not None else ""
            self.strike(lab)


def source(lab: Lab) -> VM:
    assert lab.source is not None, "no source QEMU yet"
    return lab.source


def target(lab: Lab) -> VM:
    assert lab.target is not None, "no target QEMU yet"
    return lab.target


def fault_hop(hop: Hopper, fault: Fault, case: str, **changes: Any) -> RunRecord:
    """One hop of the shared guest with the fault; it must fail, after the fault struck."""
    rec = hop([fault], pause_before_switchover=fault.phase == "switchover",
              **{"migrate_timeout": MIGRATE_TIMEOUT, **changes})
    assert fault.at is not None, f"the hop ended before {fault.phase}: {rec.error}"
    report(case, time.monotonic() - fault.at)
    assert rec.status == "failed"
    assert rec.failure is not None, rec
    return rec


def serves(guest: SharedGuest) -> None:
    """The failed or cancelled migration left the source guest running and reachable."""
    lab = guest.lab
    assert source(lab).cmd("query-status")["status"] == "running"
    lab.guest_pings_host(source(lab))
    lab.host_pings_guest()


# -- a QEMU killed mid-migration ---------------------------------------------------------


@ONE_QUEUE
def test_target_killed_source_resumes_and_serves(booted: SharedGuest, hop: Hopper) -> None:
    """QEMU's contract: a failed outgoing migration restarts a guest that was running.
    QEMU does it itself (RESUME, no `cont` needed; 7.2 and 10.2 alike). QEMU gives the
    source no error-desc for a vanished peer, so the harness must say the target died."""
    rec = fault_hop(hop, Fault("switchover", lambda lab: target(lab).kill()), "target-killed")
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["side"], rec.failure["status"]) == (
        "MigrationError", "source", "failed")
    assert "the target QEMU exited with status -9" in rec.failure["error_desc"]
    source(booted.lab).wait_event("RESUME", timeout=10)
    serves(booted)


@ONE_QUEUE
@pytest.mark.spends_guest
def test_source_killed_target_fails_on_its_own(booted: SharedGuest, hop: Hopper) -> None:
    """The target sees the stream end mid-load: it reports MIGRATION failed and exits
    with QEMU's load error, rather than waiting for a source that is gone. The error
    names the QEMU that died: a QEMUError's side is the QEMU's name, which on a guest
    that already hopped is the target of the hop before."""
    fault = Fault("switchover", lambda lab: source(lab).kill())
    rec = fault_hop(hop, fault, "source-killed")
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["side"], rec.failure["exit_status"]) == (
        "QEMUError", fault.source, -9)
    lab = booted.lab
    dst = target(lab)
    assert steps.migration_end(lab, dst) == "failed"
    assert dst.proc is not None
    assert dst.proc.wait(timeout=10) == 1
    assert "load of migration failed" in dst.stderr()
    booted.spend()


@ONE_QUEUE
def test_cancel_at_switchover_source_resumes_and_serves(booted: SharedGuest,
                                                        hop: Hopper) -> None:
    """migrate_cancel is allowed at pre-switchover: the source ends cancelled and running;
    the target, cut off mid-load, fails and exits. The run's own migrate-continue then
    finds the migration no longer held, and QEMU's refusal is what the harness reports."""
    fault = Fault("switchover", lambda lab: source(lab).cmd("migrate_cancel"))
    rec = fault_hop(hop, fault, "cancel")
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["side"], rec.failure["command"],
            rec.failure["error_class"]) == (
        "QMPCommandError", fault.source, "migrate-continue", "GenericError")
    assert "not in expected state" in rec.failure["desc"]
    lab = booted.lab
    assert steps.migration_end(lab, source(lab)) == "cancelled"
    serves(booted)
    assert steps.migration_end(lab, target(lab)) == "failed"


# -- QMP stops answering ---------------------------------------------------------------


def freeze(side: Callable[[Lab], VM]) -> Fault:
    """SIGSTOP one QEMU at switchover: its QMP socket stays open but nothing answers,
    which is what a wedged QEMU looks like. (A connection dropped while QEMU lives has
    no real cause: QEMU closes a monitor only by exiting, and that is the kill cases
    above.) The SIGCONT joins that QEMU's own teardown, ahead of its shutdown."""

    def strike(lab: Lab) -> None:
        pid = side(lab).pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        own = next(stack for vm, stack in lab.qemus if vm.pid == pid)
        own.callback(os.kill, pid, signal.SIGCONT)

    return Fault("switchover", strike)


def frozen_hop(booted: SharedGuest, hop: Hopper, side: Callable[[Lab], VM], case: str,
               timeout_s: float, **changes: Any) -> tuple[RunRecord, Fault]:
    """A hop with one QEMU frozen at switchover, and its fault. Only a timeout can
    notice, so the verdict must come by it and nothing may hang: the bound is the
    point, with HANG_SLACK_S for the teardown of the frozen QEMU, which goes with the
    guest (spent) before the clock stops."""
    fault = freeze(side)
    rec = fault_hop(hop, fault, case, **changes)
    booted.spend()
    assert fault.at is not None
    detected = time.monotonic() - fault.at
    report(f"{case} (until torn down)", detected)
    assert timeout_s <= detected < timeout_s + HANG_SLACK_S
    return rec, fault


@on(Key("new-tap", queues=4, vcpus=4))
@pytest.mark.qemu_independent
@pytest.mark.spends_guest
def test_frozen_source_times_out_on_its_command(booted: SharedGuest, hop: Hopper) -> None:
    """The harness's next command to the source is migrate-continue: no reply in
    qmp_timeout must fail the run, naming the source, alive (no exit status). A QEMU
    takes its QMP timeout at start: one plain hop first makes the next source one
    started with it."""
    first = hop(qmp_timeout=3.0)
    assert first.status == "ok", first.error
    rec, fault = frozen_hop(booted, hop, source, "source-frozen", 3.0, qmp_timeout=3.0)
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["side"]) == ("QEMUError", fault.source)
    assert "exit_status" not in rec.failure


@on(Key("new-tap"))
@pytest.mark.qemu_independent
@pytest.mark.spends_guest
def test_frozen_target_ends_at_migrate_timeout(booted: SharedGuest, hop: Hopper) -> None:
    """A target frozen at switchover reads nothing more. Whether the source still
    completes depends on whether its remaining device state fits in the socket buffer
    beside what the target had not yet read when it froze (without a return path,
    which tapmig does not enable, the source waits for no acknowledgement): so either
    the source's or the target's MIGRATION event never comes. Either way
    migrate_timeout must bound the wait and the error must name the side."""
    rec, fault = frozen_hop(booted, hop, target, "target-frozen", 5.0, migrate_timeout=5.0)
    assert rec.failure is not None
    assert rec.failure["kind"] == "QEMUError"
    assert rec.failure["side"] in (fault.source, fault.target)
    assert "exit_status" not in rec.failure
    print(f"target-frozen: the {rec.failure['side']}'s event never came")


# -- QEMU or the guest cannot start ------------------------------------------------------


@ONE_QUEUE
def test_target_that_fails_to_start(booted: SharedGuest, hop: Hopper,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad option on the target only: QEMU creates its QMP socket, then rejects the
    -device and exits; the error must carry QEMU's stderr line, and the source goes on."""

    def corrupt(lab: Lab) -> None:
        good = lab.vm_args
        monkeypatch.setattr(lab, "vm_args",
                            lambda *args: [*good(*args), "-device", "nonexistent"])

    rec = fault_hop(hop, Fault("probing", corrupt), "target-bad-option")
    monkeypatch.undo()
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["exit_status"]) == ("QEMUError", 1)
    # The QEMU that failed is the hop's new target: "target", or "target-N" on a guest
    # that already hopped (it did not exist when the fault struck).
    assert re.fullmatch(r"target(-\d+)?", rec.failure["side"]), rec.failure["side"]
    assert "'nonexistent' is not a valid device model name" in rec.failure["stderr_tail"]
    serves(booted)


def random_file(kernel: Path) -> bytes:
    return random.Random(1).randbytes(kernel.stat().st_size)


def random_code(kernel: Path) -> bytes:
    """The real boot header and setup code (so QEMU loads it), then random bytes."""
    data = kernel.read_bytes()
    setup_end = (data[0x1F1] + 1) * 512
    return data[:setup_end] + random.Random(1).randbytes(len(data) - setup_end)


@pytest.mark.parametrize(("corrupt", "exit_status", "stderr"), [
    (random_file, 1, "linux kernel too old to load a ram disk"),
    (random_code, 0, ""),
], ids=["random-file", "random-code"])
def test_wrong_kernel(tapmig_run: RunFactory, tapmig_qemu: str, tapmig_guest: Guest,
                      tmp_path: Path, corrupt: Callable[[Path], bytes], exit_status: int,
                      stderr: str) -> None:
    """A random file: QEMU refuses it as an ancient kernel and exits 1. A valid header
    over random code: the guest crashes at once, and -no-reboot turns the reset into a
    QEMU exit 0, which the harness must see at once rather than wait out the boot
    timeout. TCG, because under auto a new kernel would cost (and cache) a KVM probe
    boot."""
    assert tapmig_guest.kernel is not None
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(corrupt(tapmig_guest.kernel))
    broken = Guest(name="wrong-kernel", kernel=kernel, initrd=tapmig_guest.initrd)
    rec = tapmig_run(Config(qemu=tapmig_qemu, guest=broken, accel="tcg", queues=1,
                            boot_timeout=BOOT_TIMEOUT))
    assert rec.duration_s is not None
    report(f"wrong-kernel {corrupt.__name__}", rec.duration_s)
    assert rec.status == "failed"
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["side"], rec.failure["exit_status"]) == (
        "QEMUError", "source", exit_status)
    assert stderr in rec.failure["stderr_tail"]


# -- the probe and the host --------------------------------------------------------------


def own_children(word: str) -> list[int]:
    """PIDs of this process's children whose command line contains `word`."""
    return [pid for pid, _comm in children(os.getpid()) if word in cmdline(pid)]


@ONE_QUEUE
@pytest.mark.qemu_independent
def test_prober_killed(booted: SharedGuest, hop: Hopper) -> None:
    """The prober dies mid-migration: its log would have a hole that looks like an outage,
    so the run must fail and say the prober died, not report a blackout."""

    def kill_prober(_lab: Lab) -> None:
        pids = own_children("harness.probes.icmp")
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)

    # No reply can come after RESUME from a dead prober: waiting 10 s for one would
    # only delay the verdict this test is about.
    rec = fault_hop(hop, Fault("switchover", kill_prober), "prober-killed",
                    recover_timeout=1.0)
    assert rec.failure is not None
    assert (rec.failure["kind"], rec.failure["probe"], rec.failure["status"],
            rec.failure["early"]) == ("ProbeFailed", "ping", -9, True)
    assert rec.blackout_ms is None


@pytest.fixture
def tiny_shm(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, unmounted afterwards whatever happens."""
    if shutil.which("mount") is None:
        pytest.skip("mount (util-linux) is missing: it makes the tiny tmpfs")
    mnt = tmp_path / "shm"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"this host cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.qemu_independent
def test_no_room_for_guest_ram(tapmig_run: RunFactory, tapmig_qemu: str, tapmig_guest: Guest,
                               tapmig_accel: AccelChoice, tiny_shm: Path) -> None:
    """Refused before the guest's RAM file is made, naming the directory, both sizes and
    the way out."""
    rec = tapmig_run(Config(qemu=tapmig_qemu, guest=tapmig_guest, accel=tapmig_accel,
                            ram_mib=256), shm_dir=tiny_shm)
    assert rec.duration_s is not None
    report("shm-full", rec.duration_s)
    assert rec.status == "failed"
    assert rec.failure is not None and rec.failure["kind"] == "HostError"
    assert rec.error == (f"{tiny_shm} has 1 MiB free but the guest needs 256 MiB; "
                         "free some space or use a smaller --ram")
    assert rec.boot_s is None
    assert list(tiny_shm.iterdir()) == []
