"""Choosing KVM or TCG, by proof rather than by the presence of /dev/kvm.

/dev/kvm can open and still be useless: under some nested paravirtual
hypervisors a stock kernel hangs before printing a single line. So `auto`
boots the guest kernel briefly under KVM and waits for its first printk; no
line within the probe timeout means TCG, with the reason printed. The verdict
is cached per (QEMU binary, kernel, host kernel), so only the first run pays.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path

from harness import atomic
from harness.errors import HostError, QEMUError
from harness.guest.embedded import build_embedded
from harness.guest.spec import Guest
from harness.host.devices import KVM, kvm_problem
from harness.proc import PREFIX
from harness.qemu.vm import VM
from harness.vocabulary import Accel, AccelChoice, Log, as_accel_choice

PROBE_TIMEOUT = 10.0


def firmware_args() -> list[str]:
    """A QEMU built from Debian's +ds tarball ships no firmware: point it at Debian's."""
    args = []
    for d in ("/usr/share/seabios", "/usr/share/qemu"):
        if os.path.isdir(d):
            args += ["-L", d]
    return args


def probe_boot(qemu: str, guest: Guest, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Boot the guest kernel under KVM until its first printk; None if it printed."""
    initrd = ["-initrd", str(guest.initrd)] if guest.initrd is not None else []
    with tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-kvmprobe-") as tmp:
        vm = VM("kvm-probe", qemu, [
            "-machine", "q35", "-accel", "kvm", "-m", "256", "-nodefaults", "-display", "none",
            "-no-reboot", *firmware_args(), "-kernel", str(guest.kernel), *initrd,
            "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1",
            "-S",  # no RESUME racing the QMP greeting (see qemu.capabilities); cont once up
        ], Path(tmp))
        try:
            with vm:
                vm.cmd("cont")
                vm.wait_console(r"Linux version", timeout=timeout)
        except QEMUError:
            err = vm.stderr().strip().splitlines()
            died = vm.proc is not None and vm.proc.returncode not in (None, 0, -15)
            detail = f" (QEMU exited: {err[-1]})" if died and err else ""
            return (f"{KVM} opens, but a probe boot of {guest.name} under KVM printed no kernel "
                    f"line within {timeout:.0f}s{detail}; this host's KVM cannot run a stock "
                    "kernel (nested or paravirtual hypervisor?)")
    return None


def choose(requested: AccelChoice, qemu: str, guest: Guest, cache: Path,
           log: Log = print) -> tuple[Accel, str]:
    """(accelerator, reason): why this run uses what it uses."""
    requested = as_accel_choice(requested)  # a typo'd TAPMIG_ACCEL is a one-line error
    if requested == "tcg":
        return "tcg", "TCG requested with --accel tcg"
    problem = kvm_problem()
    if problem is None:
        # An ISO guest's kernel sits inside the ISO, where a probe cannot -kernel it, and
        # a distribution's boot prints no line early enough to time: probe the embedded one.
        if guest.kernel is None:
            guest = build_embedded(cache, log)
        st = os.stat(qemu)
        key = hashlib.sha256(json.dumps([qemu, st.st_size, st.st_mtime, str(guest.kernel),
                                         platform.release()]).encode()).hexdigest()[:16]
        stamp = cache / "accel" / f"{key}.json"
        if stamp.exists():
            problem = json.loads(stamp.read_text())["problem"]
        else:
            log("probing whether KVM can boot the guest (once per QEMU and kernel)...")
            problem = probe_boot(qemu, guest)
            stamp.parent.mkdir(parents=True, exist_ok=True)
            # Whole, then renamed: a run in parallel (pytest -n) never reads half a verdict.
            atomic.write_text(stamp, json.dumps({"problem": problem}))
    if problem is None:
        return "kvm", "KVM boots the guest"
    if requested == "kvm":
        raise HostError(f"--accel kvm, but {problem}; use --accel auto or tcg")
    return "tcg", f"TCG, because {problem}"
