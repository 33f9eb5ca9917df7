"""A side of a hop: one QEMU binary in one role, and everything it is told.

Source and target are two sides. In a live update they are two binaries, each with its
own capabilities (harness.qemu.capabilities), its own interface of the series and its
own firmware, on one machine type and CPU model that both offer (`Machine`). A side
builds, from its own capabilities, the command line, the netdev and NIC properties and
the migration capabilities and parameters, so that a target never gets an option only
the source speaks.

Knows nothing of namespaces: it is handed the TAP's name and the RAM file's path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import Unsupported
from harness.qemu.capabilities import Capabilities, q35_version
from harness.vocabulary import Accel, Mode

# Debian's firmware: a QEMU built from the +ds tarball ships none.
FIRMWARE_DIRS = ("/usr/share/seabios", "/usr/share/qemu")
# A CPU model whose ABI both of two different binaries keep (QEMU versions its named
# models with the machine type); `max` and `host` promise nothing across versions.
CROSS_BINARY_CPU = "qemu64"


@dataclass(frozen=True)
class Machine:
    """The machine type and CPU model a guest runs on, both sides alike, chosen once per
    guest; notes say what a user should know (a deprecated type)."""

    type: str
    cpu: str
    notes: tuple[str, ...] = ()


def choose_machine(source: Capabilities, target: Capabilities, accel: Accel,
                   requested: str | None = None) -> Machine:
    """--machine if both offer it; else, for one binary, what its q35 alias means, and for
    two, the newest versioned q35 both offer (as QEMU's own migration-compat tests pick
    it): the alias resolves differently in each, and the target refuses another type."""
    same = source.qemu == target.qemu
    cpu = ("host" if accel == "kvm" else "max") if same else CROSS_BINARY_CPU
    if requested is not None:
        lacking = [c for c in (source, target) if requested not in c.q35_types
                   and requested != c.q35_alias and requested != "q35"]
        if lacking:
            raise Unsupported(f"{lacking[0].qemu} ({lacking[0].version}) has no machine type "
                              f"{requested!r}; give one both sides offer, e.g. "
                              f"{common_q35(source, target) or 'none in common'}")
        chosen = requested
    elif same:
        chosen = source.q35_alias or "q35"
    elif not (chosen := common_q35(source, target)):
        raise Unsupported(f"{source.qemu} ({source.version}) and {target.qemu} "
                          f"({target.version}) have no versioned q35 machine type in common; "
                          "give --machine TYPE")
    notes = tuple(f"machine type {chosen} is deprecated in {c.qemu} ({c.version})"
                  for c in dict.fromkeys((source, target)) if chosen in c.deprecated)
    return Machine(chosen, cpu, notes)


def common_q35(a: Capabilities, b: Capabilities) -> str:
    """The newest pc-q35-X.Y both binaries offer, or ""."""
    both = set(a.q35_types) & set(b.q35_types)
    return max(both, key=q35_version) if both else ""


def firmware_args(dirs: tuple[str, ...]) -> list[str]:
    return [arg for d in dirs if os.path.isdir(d) for arg in ("-L", d)]


@dataclass(frozen=True)
class Side:
    """One binary, on the guest's machine, with its own firmware dirs."""

    caps: Capabilities
    machine: Machine
    firmware: tuple[str, ...] = FIRMWARE_DIRS

    @property
    def qemu(self) -> str:
        return self.caps.qemu

    def command_line(self, *, accel: Accel, vcpus: int, ram_mib: int, shm: Path,
                     guest_args: list[str], trace: list[str], incoming: bool) -> list[str]:
        """A QEMU with no NIC yet (QMP adds it), stopped (-S), on the shared RAM file."""
        args = [
            "-machine", f"{self.machine.type},memory-backend=ram0", "-accel", accel,
            "-cpu", self.machine.cpu, "-smp", str(vcpus), "-m", f"{ram_mib}M",
            "-object", f"memory-backend-file,id=ram0,size={ram_mib}M,mem-path={shm},share=on",
            "-nodefaults", "-display", "none", "-no-reboot", "-S",
            *firmware_args(self.firmware),
            "-device", "pcie-pci-bridge,id=pci.1,bus=pcie.0",
            *guest_args, *trace,
        ]
        return [*args, "-incoming", "defer"] if incoming else args

    def migration_capabilities(self, pause_before_switchover: bool) -> list[dict[str, Any]]:
        caps = [{"capability": "events", "state": True},
                {"capability": "x-ignore-shared", "state": True}]
        if pause_before_switchover:
            caps.append({"capability": "pause-before-switchover", "state": True})
        return caps

    def migration_parameters(self, mode: Mode) -> dict[str, Any]:
        """`local`, where this QEMU has it (Debian's 7.2 does not; upstream's test dies
        there): set before the TAP exists, as the final interface needs."""
        return {"local": mode == "local"} if self.caps.local else {}

    def netdev(self, mode: Mode, queues: int, vhost: bool, ifname: str,
               incoming: bool) -> dict[str, Any]:
        """netdev_add's arguments in the interface this QEMU speaks. The series' option
        is always given, true or false, so that no machine type's default decides."""
        netdev: dict[str, Any] = {"type": "tap", "id": "net0", "queues": queues,
                                  "script": "no", "downscript": "no", "vhost": vhost}
        local = mode == "local"
        if self.caps.interface == "final":
            netdev[str(self.caps.tap_local_option)] = local
        if local and incoming:
            # The fds arrive with the migration stream and carry the TAP's identity. v12
            # silently ignores ifname/vnet_hdr here (reviewers asked for errors); the
            # final interface has no incoming-fds and is told by `local` alone.
            if self.caps.interface == "v12":
                netdev["incoming-fds"] = True
        else:
            netdev.update(ifname=ifname, vnet_hdr=True)
        return netdev

    def nic(self, mode: Mode, queues: int, mac: str) -> dict[str, Any]:
        nic: dict[str, Any] = {"driver": "virtio-net-pci", "id": "nic0", "netdev": "net0",
                               "bus": "pci.1", "mac": mac, "romfile": ""}
        if queues > 1:
            nic.update(mq=True, vectors=2 * queues + 2)
        if self.caps.local_migration:  # v12's device property; gone in the final interface
            nic["local-migration"] = mode == "local"
        return nic


def check_pair(mode: Mode, source: Capabilities, target: Capabilities) -> None:
    """Local mode needs both sides to speak one interface of the series: v12's fields sit
    in virtio-net's state with no marker, so a target of another interface misparses
    the stream. Refused before anything boots, naming the side and what it lacks."""
    if mode != "local":
        return
    for role, caps in (("source", source), ("target", target)):
        if missing := caps.missing_for_local():
            raise Unsupported(f"the {role} {caps.qemu} ({caps.version}) cannot do local "
                              f"migration: missing {', '.join(missing)}")
    if source.interface != target.interface:
        raise Unsupported(f"local migration needs one interface on both sides: the source "
                          f"{source.qemu} speaks {source.interface}, the target "
                          f"{target.qemu} {target.interface}; use --mode new-tap")
