"""Faults struck at a real migration, and what the harness and QEMU make of them.

Each case runs real QEMU processes and kills, stops or starves one piece at a
fixed phase (the fault hook; "switchover" holds the source at pre-switchover).
The run must end promptly with an error that names the side and QEMU's own
words; where QEMU promises that a failed or cancelled migration leaves the
source serving, the Migration pieces are driven directly so that the source
can be checked before teardown. The autouse leak check proves nothing is left.
Each test prints "fault-detection <case> <seconds>": the time from the fault
to the harness's verdict (for run(), until it returned, teardown included).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from harness import accel
from harness.cache import default_cache
from harness.guest import Guest
from harness.probe import Capabilities
from harness.record import RunRecord
from harness.scenario import (
    ENDED,
    HOST_IP,
    PREFIXLEN,
    TAP0,
    TAP1,
    TAP_MAC,
    Config,
    Migration,
    run,
)
from harness.vm import VM

pytestmark = [pytest.mark.kvm, pytest.mark.usefixtures("root_with_tun")]

# Generous next to a TCG boot (5-10 s) and a migration (well under 1 s); every
# case must end far sooner, which is what the duration asserts check.
BOOT_TIMEOUT = 60.0
MIGRATE_TIMEOUT = 30.0
PROMPT_S = 5.0  # a fault that kills or refuses must be reported within this


def report(case: str, seconds: float) -> None:
    print(f"fault-detection {case} {seconds:.3f}")


class Fault:
    """A fault hook that strikes once, at one phase, and remembers when."""

    def __init__(self, phase: str, strike: Callable[[Migration, dict[str, VM]], None]) -> None:
        self.phase = phase
        self.strike = strike
        self.at: float | None = None

    def __call__(self, phase: str, m: Migration, vms: dict[str, VM]) -> None:
        if phase == self.phase:
            self.at = time.monotonic()
            self.strike(m, vms)


def run_with_fault(qemu: str, guest: Guest, accel_choice: str, fault: Fault, case: str, *,
                   migrate_timeout: float = MIGRATE_TIMEOUT, qmp_timeout: float = 30.0,
                   detect_after: float = 0.0) -> RunRecord:
    """A full run() with the fault: it struck, the run failed, and it returned within
    PROMPT_S of the fault (of detect_after, for a fault only a timeout can see)."""
    rec = run(Config(qemu=qemu, guest=guest, accel=accel_choice, queues=1, fault=fault,
                     boot_timeout=BOOT_TIMEOUT, migrate_timeout=migrate_timeout,
                     qmp_timeout=qmp_timeout))
    assert fault.at is not None, f"the run ended before {fault.phase}: {rec.error}"
    detected = time.monotonic() - fault.at
    report(case, detected)
    assert detect_after <= detected < detect_after + PROMPT_S
    assert rec.status == "failed"
    assert rec.error is not None
    assert rec.duration_s is not None and rec.duration_s < MIGRATE_TIMEOUT
    return rec


def own_children(word: str) -> list[int]:
    """PIDs of this process's children whose command line contains `word`."""
    me, found = str(os.getpid()), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if ppid == me and word in cmdline:
            found.append(int(proc.name))
    return found


def hold_nothing(phase: str, m: Migration, vms: dict[str, VM]) -> None:
    """Any fault hook makes prepare_migration set pause-before-switchover."""


@pytest.fixture
def lab(caps: Capabilities, guest: Guest, accel_choice: str) -> Iterator[Migration]:
    """The pieces of a new-TAP run (namespace, tap0/tap1, run dir, RAM file), no VM yet."""
    accel_name, _ = accel.choose(accel_choice, caps.qemu, guest, default_cache(),
                                 log=lambda _m: None)
    cfg = Config(qemu=caps.qemu, queues=1, fault=hold_nothing, migrate_timeout=MIGRATE_TIMEOUT)
    with ExitStack() as stack:
        m = Migration(cfg, caps, guest, accel_name, stack, log=print)
        m.ns.add_tap(TAP0, mac=TAP_MAC, cidr=f"{HOST_IP}/{PREFIXLEN}", multi_queue=False)
        m.ns.add_tap(TAP1, multi_queue=False)
        yield m


def held_at_switchover(lab: Migration) -> tuple[VM, VM]:
    """A booted source migrating to a target, held at pre-switchover: the guest is
    stopped, RAM is shared, only the device state is still to go."""
    src = lab.boot_source()
    dst = lab.start_vm("target", incoming=True)
    uri = f"unix:{lab.rundir / 'migration.sock'}"
    dst.cmd("migrate-incoming", uri=uri)
    src.cmd("migrate", uri=uri)
    while (status := lab.migration_status(src)) != "pre-switchover":
        assert status not in ENDED, f"migration {status} before pre-switchover"
    assert src.cmd("query-status")["status"] == "finish-migrate"
    return src, dst


def source_serves(lab: Migration, src: VM) -> None:
    """The failed or cancelled migration left the source guest running and reachable."""
    assert src.cmd("query-status")["status"] == "running"
    lab.guest_pings_host(src)
    lab.host_pings_guest()


# -- a QEMU killed mid-migration ---------------------------------------------------------


def test_target_killed_source_resumes_and_serves(lab: Migration) -> None:
    """QEMU's contract: a failed outgoing migration restarts a guest that was running.
    QEMU does it itself (RESUME, no `cont` needed; 7.2 and 10.2 alike)."""
    src, dst = held_at_switchover(lab)
    t0 = time.monotonic()
    dst.kill()
    src.cmd("migrate-continue", state="pre-switchover")
    assert lab.migration_end(src) == "failed"
    report("target-killed (pieces)", time.monotonic() - t0)
    assert time.monotonic() - t0 < PROMPT_S
    src.wait_event("RESUME", timeout=10)
    source_serves(lab, src)


def test_target_killed_run_names_the_dead_target(qemu: str, guest: Guest,
                                                 accel_choice: str) -> None:
    """QEMU gives the source no error-desc for a vanished peer, so the harness must say
    that the target died, or the record would read "failed: failed"."""
    fault = Fault("switchover", lambda _m, vms: vms["target"].kill())
    rec = run_with_fault(qemu, guest, accel_choice, fault, "target-killed")
    assert rec.error is not None
    assert rec.error.startswith("migration failed on the source: ")
    assert "the target QEMU exited with status -9" in rec.error


def test_source_killed_target_fails_on_its_own(lab: Migration) -> None:
    """The target sees the stream end mid-load: it reports MIGRATION failed and exits
    with QEMU's load error, rather than waiting for a source that is gone."""
    src, dst = held_at_switchover(lab)
    t0 = time.monotonic()
    src.kill()
    assert lab.migration_end(dst) == "failed"
    report("source-killed (pieces)", time.monotonic() - t0)
    assert time.monotonic() - t0 < PROMPT_S
    assert dst.proc is not None
    assert dst.proc.wait(timeout=10) == 1
    assert "load of migration failed" in dst.stderr()


def test_source_killed_run_names_the_source(qemu: str, guest: Guest, accel_choice: str) -> None:
    fault = Fault("switchover", lambda _m, vms: vms["source"].kill())
    rec = run_with_fault(qemu, guest, accel_choice, fault, "source-killed")
    assert rec.error is not None
    assert rec.error.startswith("source: migrate-continue: QMP failed")
    assert "[source: QEMU exited with status -9]" in rec.error


def test_cancel_at_switchover_source_resumes_and_serves(lab: Migration) -> None:
    """migrate_cancel is allowed at pre-switchover: the source ends cancelled and running;
    the target, cut off mid-load, fails and exits."""
    src, dst = held_at_switchover(lab)
    t0 = time.monotonic()
    src.cmd("migrate_cancel")
    assert lab.migration_end(src) == "cancelled"
    report("migrate_cancel (pieces)", time.monotonic() - t0)
    assert time.monotonic() - t0 < PROMPT_S
    source_serves(lab, src)
    assert lab.migration_end(dst) == "failed"


# -- QMP stops answering ---------------------------------------------------------------


def freeze(side: str) -> Fault:
    """SIGSTOP one QEMU: its QMP socket stays open but nothing answers, which is what a
    wedged QEMU looks like. (A connection dropped while QEMU lives has no real cause:
    QEMU closes a monitor only by exiting, and that is the kill cases above.) The
    SIGCONT joins the run's own teardown, ahead of the VMs' shutdown."""

    def strike(m: Migration, vms: dict[str, VM]) -> None:
        pid = vms[side].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        m.stack.callback(os.kill, pid, signal.SIGCONT)

    return Fault("switchover", strike)


def test_frozen_source_times_out_on_its_command(qemu: str, guest: Guest,
                                               accel_choice: str) -> None:
    """The harness's next command to the source is migrate-continue: no reply in
    qmp_timeout must fail the run with that timeout named, not hang."""
    rec = run_with_fault(qemu, guest, accel_choice, freeze("source"), "source-frozen",
                         qmp_timeout=3.0, detect_after=3.0)
    assert rec.error is not None
    assert rec.error.startswith("source: migrate-continue: no QMP reply within 3s")


def test_frozen_target_ends_at_migrate_timeout(qemu: str, guest: Guest,
                                              accel_choice: str) -> None:
    """A target frozen at switchover reads nothing more. Whether the source still
    completes depends on whether its remaining device state fits in the socket buffer
    beside what the target had not yet read when it froze (without a return path,
    which tapmig does not enable, the source waits for no acknowledgement): so either
    the source's or the target's MIGRATION event never comes. Either way
    migrate_timeout must bound the wait and the error must name the side."""
    fault = freeze("target")
    rec = run_with_fault(qemu, guest, accel_choice, fault, "target-frozen",
                         migrate_timeout=5.0, detect_after=5.0)
    assert rec.error is not None
    waited = re.match(r"(source|target): no MIGRATION event within 5s\n", rec.error)
    assert waited, rec.error
    print(f"target-frozen: the {waited[1]}'s event never came")


# -- QEMU or the guest cannot start ------------------------------------------------------


def test_target_that_fails_to_start(qemu: str, guest: Guest, accel_choice: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad option on the target only: QEMU creates its QMP socket, then rejects the
    -device and exits; the error must carry QEMU's stderr line."""

    def corrupt(m: Migration, _vms: dict[str, VM]) -> None:
        good = m.vm_args
        monkeypatch.setattr(m, "vm_args",
                            lambda incoming: [*good(incoming), "-device", "nonexistent"])

    rec = run_with_fault(qemu, guest, accel_choice, Fault("probing", corrupt), "target-bad-option")
    assert rec.error is not None
    assert rec.error.startswith("target: QEMU failed at start")
    assert "[target: QEMU exited with status 1]" in rec.error
    assert "'nonexistent' is not a valid device model name" in rec.error


def random_file(kernel: Path) -> bytes:
    return random.Random(1).randbytes(kernel.stat().st_size)


def random_code(kernel: Path) -> bytes:
    """The real boot header and setup code (so QEMU loads it), then random bytes."""
    data = kernel.read_bytes()
    setup_end = (data[0x1F1] + 1) * 512
    return data[:setup_end] + random.Random(1).randbytes(len(data) - setup_end)


@pytest.mark.parametrize(("corrupt", "expect"), [
    (random_file, ["source: QEMU failed at start", "[source: QEMU exited with status 1]",
                   "linux kernel too old to load a ram disk"]),
    (random_code, ["source: console never showed", "before QEMU exited",
                   "[source: QEMU exited with status 0]"]),
], ids=["random-file", "random-code"])
def test_wrong_kernel(qemu: str, guest: Guest, tmp_path: Path,
                      corrupt: Callable[[Path], bytes], expect: list[str]) -> None:
    """A random file: QEMU refuses it as an ancient kernel and exits. A valid header over
    random code: the guest crashes at once, and -no-reboot turns the reset into a QEMU
    exit. TCG, because under auto a new kernel would cost (and cache) a KVM probe boot."""
    assert guest.kernel is not None
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(corrupt(guest.kernel))
    broken = Guest(name="wrong-kernel", kernel=kernel, initrd=guest.initrd)
    rec = run(Config(qemu=qemu, guest=broken, accel="tcg", queues=1, boot_timeout=BOOT_TIMEOUT))
    assert rec.duration_s is not None
    report(f"wrong-kernel {corrupt.__name__}", rec.duration_s)
    assert rec.status == "failed"
    assert rec.error is not None
    for text in expect:
        assert text in rec.error
    assert rec.duration_s < PROMPT_S


# -- the probe and the host --------------------------------------------------------------


def test_probe_killed(qemu: str, guest: Guest, accel_choice: str) -> None:
    """The prober dies mid-migration: its log would have a hole that looks like an outage,
    so the run must fail and say the probe died, not report a blackout."""

    def kill_probe(_m: Migration, _vms: dict[str, VM]) -> None:
        pids = own_children("harness.icmp_probe")
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)

    rec = run_with_fault(qemu, guest, accel_choice, Fault("switchover", kill_probe),
                         "probe-killed")
    assert rec.error is not None
    assert rec.error.startswith("ping exited early with status -9")
    assert rec.blackout_ms is None


@pytest.fixture
def tiny_shm(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, unmounted afterwards whatever happens."""
    mnt = tmp_path / "shm"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_no_room_for_guest_ram(qemu: str, guest: Guest, accel_choice: str,
                               tiny_shm: Path) -> None:
    """Refused before any QEMU starts, naming the directory, both sizes and the way out."""
    rec = run(Config(qemu=qemu, guest=guest, accel=accel_choice, ram_mib=256,
                     shm_dir=tiny_shm))
    assert rec.duration_s is not None
    report("shm-full", rec.duration_s)
    assert rec.status == "failed"
    assert rec.error == (f"{tiny_shm} has 1 MiB free but the guest needs 256 MiB; "
                         "free some space or use a smaller --ram")
    assert rec.duration_s < PROMPT_S
    assert list(tiny_shm.iterdir()) == []
