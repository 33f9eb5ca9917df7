"""The bench one run works on: its namespace and TAPs, RAM file, run dir and QEMUs.

A Lab owns nothing itself: every resource is entered into the run's ExitStack,
whose unwinding is the teardown. It knows how to start a QEMU for the series'
interface this binary speaks (see harness.qemu.capabilities); the scenario decides
when.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness.analysis.queues import QueueCounts
from harness.errors import CheckFailed
from harness.host.netns import Namespace
from harness.host.rundir import SHM_DIR, RunDir, ShmFile
from harness.probes import driver
from harness.proc import signals_deferred
from harness.qemu import accel
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
from harness.run.observer import Observer, Phase
from harness.run.setup import Setup


class Lab:
    """The resources of one run (or one chain of hops), torn down by its ExitStack."""

    def __init__(self, cfg: Config, setup: Setup, stack: ExitStack, log: Callable[[str], None],
                 observers: Sequence[Observer[Lab]] = (), shm_dir: Path = SHM_DIR) -> None:
        self.cfg, self.setup = cfg, setup
        self.caps, self.guest, self.accel = setup.caps, setup.guest, setup.accel
        self.log = log
        self.observers = tuple(observers)
        self.stack = stack
        with signals_deferred():  # each one removed by the stack as soon as it exists
            self.rundir: Path = stack.enter_context(RunDir())
            self.ns = stack.enter_context(Namespace())
            self.shm = stack.enter_context(ShmFile(cfg.ram_mib, shm_dir))
        self.source: VM | None = None
        self.target: VM | None = None
        self.host_tap = TAP0  # the TAP that holds the host's IP and MAC, and serves the source
        self.hop = 0  # migrations done so far
        # The guest's echo servers (harness.run.traffic) run; its latest queue counters.
        self.guest_servers = False
        self.queue_baseline: QueueCounts | None = None

    def notify(self, phase: Phase) -> None:
        """Every observer, in order, at this phase of the hop."""
        for observer in self.observers:
            observer(phase, self)

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

    def vm_args(self, incoming: bool, name: str = "") -> list[str]:
        cpu = "host" if self.accel == "kvm" else "max"
        args = [
            "-machine", "q35,memory-backend=ram0", "-accel", self.accel, "-cpu", cpu,
            "-smp", str(self.cfg.vcpus), "-m", f"{self.cfg.ram_mib}M",
            "-object", f"memory-backend-file,id=ram0,size={self.cfg.ram_mib}M,"
                       f"mem-path={self.shm},share=on",
            "-nodefaults", "-display", "none", "-no-reboot", "-S",
            *accel.firmware_args(),
            "-device", "pcie-pci-bridge,id=pci.1,bus=pcie.0",
            *self.guest.boot_args(GUEST_CIDR),
            *(trace_args(self.trace_log(name), self.caps.trace) if self.cfg.trace else []),
        ]
        return [*args, "-incoming", "defer"] if incoming else args

    def launch(self, name: str, incoming: bool) -> VM:
        """A QEMU with no NIC yet, owned by the run's ExitStack."""
        return self.stack.enter_context(VM(name, self.caps.qemu, self.vm_args(incoming, name),
                                           self.rundir, prefix=self.ns.exec_prefix(),
                                           qmp_timeout=self.cfg.qmp_timeout))

    def netdev(self, incoming: bool) -> dict[str, Any]:
        """netdev_add's arguments, in the interface this QEMU speaks."""
        netdev: dict[str, Any] = {"type": "tap", "id": "net0", "queues": self.cfg.queues,
                                  "script": "no", "downscript": "no", "vhost": self.cfg.vhost}
        if self.caps.interface == "final":
            netdev[str(self.caps.tap_local_option)] = self.local
        if self.local and incoming:
            # The fds arrive with the migration stream and carry the TAP's identity. v12
            # silently ignores ifname/vnet_hdr here (reviewers asked for errors); the
            # final interface has no incoming-fds and is told by `local` alone.
            if self.caps.interface == "v12":
                netdev["incoming-fds"] = True
        else:
            netdev.update(ifname=self.target_tap() if incoming else self.host_tap,
                          vnet_hdr=True)
        return netdev

    def nic(self) -> dict[str, Any]:
        nic: dict[str, Any] = {"driver": "virtio-net-pci", "id": "nic0", "netdev": "net0",
                               "bus": "pci.1", "mac": GUEST_MAC, "romfile": ""}
        if self.cfg.queues > 1:
            nic.update(mq=True, vectors=2 * self.cfg.queues + 2)
        if self.caps.local_migration:  # v12's device property; gone in the final interface
            nic["local-migration"] = self.local
        return nic

    def prepare_migration(self, vm: VM) -> None:
        """Capabilities, then `local`, before the TAP exists: the final interface needs
        that order and v12 accepts it."""
        caps = [{"capability": "events", "state": True},
                {"capability": "x-ignore-shared", "state": True}]
        if self.cfg.pause_before_switchover:
            caps.append({"capability": "pause-before-switchover", "state": True})
        vm.cmd("migrate-set-capabilities", capabilities=caps)
        if self.caps.local:  # Debian's 7.2 has no such parameter; upstream's test dies there
            vm.cmd("migrate-set-parameters", local=self.local)

    def start_vm(self, name: str, incoming: bool) -> VM:
        """A QEMU with the NIC on the right TAP, ready to boot or to receive."""
        vm = self.launch(name, incoming)
        self.prepare_migration(vm)
        vm.cmd("netdev_add", self.netdev(incoming))
        vm.cmd("device_add", self.nic())
        return vm

    def guest_pings_host(self, vm: VM) -> None:
        # "1 packets received" (busybox) or "1 received" (iputils), only if in time.
        vm.run_console(f"ping -c 1 -W 3 {HOST_IP}", r" 1 (packets )?received",
                       failure=r" 0 (packets )?received", timeout=20)

    def host_pings_guest(self) -> None:
        if not driver.ping_once(self.ns.exec_prefix(), GUEST_IP, timeout_s=3):
            raise CheckFailed(f"the host could not ping the guest at {GUEST_IP}",
                              check="host-pings-guest")
