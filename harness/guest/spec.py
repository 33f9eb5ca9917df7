"""What a guest is: how QEMU boots it and how its eth0 gets tapmig's address.

A Guest talks to its VM only through the Console protocol (the serial console's
shell), so this module knows nothing of QEMU; harness.qemu.vm.VM satisfies it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from harness.errors import UsageError


class Console(Protocol):
    """The guest's serial console shell, as a booted guest is driven."""

    def wait_console(self, pattern: str, timeout: float = 30.0,
                     failure: str | None = None) -> re.Match[str]: ...

    def run_console(self, command: str, expect: str, timeout: float = 20.0,
                    failure: str | None = None) -> re.Match[str]: ...


HELPER = "tapmig-guest"  # its name on the guest's PATH
READY = "TAPMIG-GUEST-READY"
PROMPT = "tapmig# "


# Console guests: upstream logs in as root and waits for a root prompt. The quotes in
# the command keep its echo from matching the marker it waits for.
LOGIN = "login:"
SHELL_PROMPT = "# "
NET_OK = "TAPMIG-NET-OK"
NET_FAILED = "TAPMIG-NET-FAILED"
NET_UP = ('ip addr add {cidr} dev eth0 && ip link set eth0 up && echo TAPMIG-NET-"OK" '
          '|| echo TAPMIG-NET-"FAILED"')


@dataclass(frozen=True)
class Guest:
    """What a VM needs to boot a guest and bring its network up: the one interface scenario uses.

    It boots from kernel (+ initrd) directly, or from iso as a CD-ROM. The
    embedded initramfs takes its address from the kernel command line; any
    console_login guest is logged into as root on ttyS0 and configured there,
    as upstream's test does with its Alpine ISO. kernel is None only for an ISO.
    """

    name: str
    kernel: Path | None = None
    initrd: Path | None = None
    iso: Path | None = None
    console_login: bool = False

    def __post_init__(self) -> None:
        iso_without_login = self.iso is not None and not self.console_login
        if (self.kernel is None) == (self.iso is None) or iso_without_login:
            raise UsageError(f"guest {self.name}: give a kernel, or an ISO with console_login")

    def boot_args(self, ip_cidr: str) -> list[str]:
        if self.iso is not None:
            # -nodefaults leaves q35's AHCI empty: attach the ISO there and boot from it.
            drive = f"file={str(self.iso).replace(',', ',,')},media=cdrom,format=raw,readonly=on"
            return ["-drive", drive, "-boot", "d"]
        initrd = ["-initrd", str(self.initrd)] if self.initrd is not None else []
        # A dracut initrd (Fedora's) would wait for a root disk or installer medium that
        # tapmig never gives; rd.break=initqueue stops it at a root shell. Others ignore it.
        how = "rd.break=initqueue" if self.console_login else f"tapmig.ip={ip_cidr}"
        # panic=-1 with -no-reboot turns a guest panic into a QEMU exit we see at once.
        return ["-kernel", str(self.kernel), *initrd,
                "-append", f"console=ttyS0 quiet panic=-1 {how}"]

    def bring_up(self, vm: Console, ip_cidr: str, timeout: float) -> None:
        """Wait until the guest has eth0 configured and a shell on the console."""
        if not self.console_login:
            vm.wait_console(READY, timeout=timeout)
            vm.wait_console(PROMPT, timeout=timeout)
            return
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(deadline - time.monotonic(), 0.1)

        # An ISO boots a distribution to its login prompt; a kernel's initrd may give a shell.
        first = LOGIN if self.iso is not None else f"{LOGIN}|{SHELL_PROMPT}"
        if vm.wait_console(first, timeout=left()).group(0) == LOGIN:
            vm.run_console("root", SHELL_PROMPT, timeout=left())
        vm.run_console(NET_UP.format(cidr=ip_cidr), NET_OK, failure=NET_FAILED, timeout=left())
