"""A --qemu that counts its own starts: a script that appends its command line to a log
and execs the real QEMU, so every start counted is a real QEMU doing its real work.

The fixture `counting_qemu` (registered by the root conftest.py) gives one per session,
wrapping Debian's QEMU, with a tapmig cache of its own: the embedded guest copied in,
and no KVM verdict yet, so that the first command that needs one runs the probe and
every later one must not.
"""

from __future__ import annotations

import shlex
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.guest.spec import Guest
from harness.host.devices import kvm_problem

DEBIAN_QEMU = Path("/usr/bin/qemu-system-x86_64")


def kind(argv: str) -> str:
    """What one start of QEMU was for, from its command line (see harness.qemu)."""
    if argv.strip() == "-version":
        return "version"  # resolve_qemu: is it a QEMU at all (no machine, no QMP)
    if "-machine none" in argv:
        return "capabilities"  # query_capabilities: the QMP schema
    if "/kvm-probe.qmp" in argv:
        return "kvm-probe"  # accel.probe_boot: can KVM boot the guest kernel
    if "-incoming" in argv:
        return "target"
    if "-machine q35" in argv or "-machine pc-q35-" in argv:  # the alias, or as resolved
        return "source"
    return f"other: {argv}"


@dataclass(frozen=True)
class CountingQemu:
    path: Path  # the script to give as --qemu
    log: Path
    cache: Path

    def starts(self) -> Counter[str]:
        """Every start since the last clear(), by kind."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return Counter(kind(line) for line in lines)

    def clear(self) -> None:
        self.log.unlink(missing_ok=True)

    def probes_expected(self) -> int:
        """1 where a command about to run must probe KVM (a usable /dev/kvm and no
        verdict cached yet for this QEMU), else 0."""
        cached = any((self.cache / "accel").glob("*.json"))
        return 0 if cached or kvm_problem() is not None else 1


@pytest.fixture(scope="session")
def counting_qemu(tmp_path_factory: pytest.TempPathFactory, tapmig_guest: Guest) -> CountingQemu:
    if not DEBIAN_QEMU.exists():
        pytest.skip(f"{DEBIAN_QEMU} is not installed (apt-get install qemu-system-x86)")
    root = tmp_path_factory.mktemp("counting")
    log, script = root / "starts.log", root / "bin" / "qemu-system-x86_64"
    script.parent.mkdir()
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {shlex.quote(str(log))}\n"
                      f"exec {shlex.quote(str(DEBIAN_QEMU))} \"$@\"\n")
    script.chmod(0o755)
    assert tapmig_guest.kernel is not None
    cache = root / "cache"
    shutil.copytree(tapmig_guest.kernel.parent, cache / "guest" / tapmig_guest.kernel.parent.name)
    return CountingQemu(script, log, cache)
