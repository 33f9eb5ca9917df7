"""The bench one guest works on: its namespace and TAPs, RAM file, run dir and QEMUs.

The namespace, RAM file and run dir are entered into the ExitStack the Lab is given,
whose unwinding is the teardown. Each QEMU has an ExitStack of its own, so that a chain
of 1000 hops lets go of the QEMUs it retired (retire()); all of them go before the
namespace does. The Lab knows how to start a QEMU of either side, in the interface its
binary speaks (harness.qemu.side); harness.run.steps decides when, and only
harness.run changes what the Lab holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness.analysis.queues import QueueCounts
from harness.errors import CheckFailed, InternalError
from harness.host.netns import Namespace
from harness.host.rundir import SHM_DIR, RunDir, ShmFile
from harness.probes import driver
from harness.proc import signals_deferred
from harness.qemu.capabilities import capabilities_of
from harness.qemu.side import FIRMWARE_DIRS, Side
from harness.qemu.trace import trace_args
from harness.qemu.vm import VM
from harness.run.config import (
    GUEST_CIDR,
    GUEST_IP,
    GUEST_MAC,
    HOST_CIDR,
    HOST_IP,
    TAP0,
    TAP1,
    TAP_MAC,
    Config,
)
from harness.run.observer import Moment, Observer
from harness.run.setup import Setup
from harness.vocabulary import Log, Mode


class Lab:
    """The resources of one run (or one chain of hops), torn down by its ExitStack."""

    def __init__(self, cfg: Config, setup: Setup, stack: ExitStack, log: Log,
                 observers: Sequence[Observer[Lab]] = (), shm_dir: Path = SHM_DIR) -> None:
        self.cfg, self.setup = cfg, setup
        self.caps, self.guest, self.accel = setup.caps, setup.guest, setup.accel
        self.log = log
        self.observers = tuple(observers)
        self.qemus: list[tuple[VM, ExitStack]] = []  # oldest first
        self.source: VM | None = None  # the QEMU that runs the guest, once booted
        self.target: VM | None = None  # an incoming QEMU, while a hop migrates
        with signals_deferred():  # each one removed by the stack as soon as it exists
            self.rundir: Path = stack.enter_context(RunDir())
            self.ns = stack.enter_context(Namespace())
            self.shm = stack.enter_context(ShmFile(cfg.ram_mib, shm_dir))
            stack.callback(self.retire)  # every QEMU, before the namespace goes
        self.host_tap = TAP0  # the TAP that holds the host's IP and MAC, and serves the source
        self.migrations = 0  # migrations done so far
        # The guest's latest queue counters (harness.run.guest_traffic): a hop counts from it.
        self.queue_baseline: QueueCounts | None = None

    def serving(self) -> VM:
        """The QEMU that runs the guest now."""
        if self.source is None:
            raise InternalError("a step that needs the serving QEMU ran before the boot")
        return self.source

    def pair_of_vms(self) -> tuple[VM, VM]:
        """The hop's source and target, while it migrates."""
        if self.source is None or self.target is None:
            raise InternalError("a migration step ran without both a source and a target")
        return self.source, self.target

    def retire(self, *keep: VM) -> None:
        """Every QEMU but those kept goes, the newest first (a half-started target before
        the QEMU it was to replace), each shut down by its own stack."""
        going = [(vm, stack) for vm, stack in reversed(self.qemus) if vm not in keep]
        self.qemus = [(vm, s) for vm, s in self.qemus if vm in keep]
        failed: list[Exception] = []
        for vm, stack in going:  # each one closed even if another's teardown failed
            try:
                stack.close()
            except Exception as exc:
                self.log(f"teardown of {vm.name} failed: {exc}")
                failed.append(exc)
        if self.target not in keep:
            self.target = None
        if self.source not in keep:
            self.source = None
        if failed:
            raise failed[0]

    def notify(self, moment: Moment, result: object = None) -> None:
        """Every observer, in order, at this moment of the hop, with its result."""
        for observer in self.observers:
            observer(moment, self, result)

    @property
    def local(self) -> bool:
        return self.cfg.mode == "local"

    def add_taps(self) -> int:
        """tap0 with the host's address, and tap1 for new-TAP; tap0's ifindex."""
        mq = self.cfg.queues > 1
        self.ns.add_tap(TAP0, mac=TAP_MAC, cidr=HOST_CIDR, multi_queue=mq)
        if not self.local:
            self.ns.add_tap(TAP1, multi_queue=mq)
        return self.ns.index(TAP0)

    def target_tap(self) -> str:
        """The TAP the next target opens: the same one in local mode, the other in new-TAP."""
        if self.local:
            return self.host_tap
        return TAP1 if self.host_tap == TAP0 else TAP0

    def trace_log(self, name: str) -> Path:
        """Where the QEMU called `name` writes its trace."""
        return self.rundir / f"{name}.trace"

    def pair(self) -> tuple[str, str]:
        """The hop's two binaries as their capabilities name them (absolute paths, as a
        VM runs them), whatever spelling Config gave: the same one twice without a
        target_qemu."""
        source = capabilities_of(self.cfg.qemu).qemu
        return source, capabilities_of(self.cfg.target_qemu).qemu if self.cfg.target_qemu \
            else source

    def side(self, binary: str | None = None) -> Side:
        """The side of a binary (the boot's, by default) on this guest's machine, with
        its capabilities (asked once per binary) and its firmware."""
        caps = capabilities_of(binary or self.cfg.qemu)
        source, target = self.pair()
        own = self.cfg.target_firmware if caps.qemu == target != source else self.cfg.firmware
        return Side(caps, self.setup.machine, own or FIRMWARE_DIRS)

    def target_side(self) -> Side:
        """The next hop's target: the other binary of the pair than the one serving, so a
        chain alternates upgrade and rollback; target_qemu while neither serves (and the
        same binary without a target_qemu)."""
        pair = self.pair()
        serving = self.source.binary if self.source is not None else pair[0]
        return self.side(pair[0] if serving == pair[1] else pair[1])

    def vm_args(self, incoming: bool, name: str = "", side: Side | None = None) -> list[str]:
        side = side or (self.target_side() if incoming else self.side())
        trace = (trace_args(self.trace_log(name), side.caps.trace) if self.cfg.trace else [])
        return side.command_line(accel=self.accel, vcpus=self.cfg.vcpus,
                                 ram_mib=self.cfg.ram_mib, shm=self.shm,
                                 guest_args=self.guest.boot_args(GUEST_CIDR), trace=trace,
                                 incoming=incoming)

    def launch(self, name: str, incoming: bool, side: Side | None = None) -> VM:
        """A QEMU with no NIC yet, in an ExitStack of its own (retire() closes it)."""
        side = side or (self.target_side() if incoming else self.side())
        stack = ExitStack()
        with signals_deferred():  # kept in self.qemus as soon as it exists
            vm = stack.enter_context(VM(name, side.qemu, self.vm_args(incoming, name, side),
                                        self.rundir, prefix=self.ns.exec_prefix(),
                                        qmp_timeout=self.cfg.qmp_timeout))
            self.qemus.append((vm, stack))
        return vm

    def netdev(self, incoming: bool, side: Side | None = None,
               mode: Mode | None = None) -> dict[str, Any]:
        """netdev_add's arguments, in the interface this side speaks, for the run's mode
        (or `mode`)."""
        side = side or (self.target_side() if incoming else self.side())
        return side.netdev(mode or self.cfg.mode, self.cfg.queues, self.cfg.vhost,
                           self.target_tap() if incoming else self.host_tap, incoming)

    def nic(self, side: Side | None = None, mode: Mode | None = None) -> dict[str, Any]:
        return (side or self.side()).nic(mode or self.cfg.mode, self.cfg.queues, GUEST_MAC)

    def prepare_migration(self, vm: VM, mode: Mode | None = None) -> None:
        """Capabilities, then `local`, before the TAP exists: the final interface needs
        that order and v12 accepts it."""
        side = self.side(vm.binary)
        vm.cmd("migrate-set-capabilities",
               capabilities=side.migration_capabilities(self.cfg.pause_before_switchover))
        if params := side.migration_parameters(mode or self.cfg.mode):
            vm.cmd("migrate-set-parameters", params)

    def start_vm(self, name: str, incoming: bool, mode: Mode | None = None) -> VM:
        """A QEMU with the NIC on the right TAP, ready to boot or to receive, set up for
        the run's mode (or `mode`)."""
        side = self.target_side() if incoming else self.side()
        vm = self.launch(name, incoming, side)
        self.prepare_migration(vm, mode)
        vm.cmd("netdev_add", self.netdev(incoming, side, mode))
        vm.cmd("device_add", self.nic(side, mode))
        return vm

    def guest_pings_host(self, vm: VM) -> None:
        # "1 packets received" (busybox) or "1 received" (iputils), only if in time.
        vm.run_console(f"ping -c 1 -W 3 {HOST_IP}", r" 1 (packets )?received",
                       failure=r" 0 (packets )?received", timeout=20)

    def host_pings_guest(self) -> None:
        if not driver.ping_once(self.ns.exec_prefix(), GUEST_IP, timeout_s=3):
            raise CheckFailed(f"the host could not ping the guest at {GUEST_IP}",
                              check="host-pings-guest")
