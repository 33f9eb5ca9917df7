"""Rootless mode: a normal user runs tapmig inside its own user + network namespace.

tapmig re-executes itself under `unshare --user --map-root-user --mount --net`.
Inside, it is root of a user namespace that owns a fresh network namespace, so
it may create namespaces and TAPs there, and nowhere else. /run is replaced by
a private tmpfs in the private mount namespace, so the named namespaces of
pyroute2 have a place to live; they vanish with the process, whatever happens.

Root of a user namespace is still the user towards the host's device nodes: a
/dev/net/tun that only the real root may open (mode 0600, as on a fresh machine
without udev's rule) stays closed inside, so preflight checks it as the user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import HostError
from harness.host import devices

ENV = "TAPMIG_ROOTLESS"
MAX_USERNS = Path("/proc/sys/user/max_user_namespaces")
DEBIAN_KNOB = Path("/proc/sys/kernel/unprivileged_userns_clone")
APPARMOR_KNOB = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")


def privileged() -> bool:
    """Root, or CAP_NET_ADMIN: the normal mode."""
    if os.geteuid() == 0:
        return True
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 12))
    return False


def _knob(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def missing() -> str | None:
    """Why this host cannot give a normal user its own namespaces, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if _knob(MAX_USERNS) == 0:
        return f"user namespaces are disabled ({MAX_USERNS} is 0)"
    if _knob(DEBIAN_KNOB) == 0:
        return f"unprivileged user namespaces are disabled ({DEBIAN_KNOB} is 0)"
    if _knob(APPARMOR_KNOB) == 1:
        return f"AppArmor restricts unprivileged user namespaces ({APPARMOR_KNOB} is 1)"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net", "true"],
                           capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"unshare --user failed: {probe.stderr.strip() or probe.returncode}"
    return None


def tun_refusal(tun: Path | None = None) -> str | None:
    """Why this user cannot create TAPs in rootless mode, with the fix, or None.

    `tun` is for tests, which point it at a device node of their own."""
    tun = tun or devices.TUN
    if why := devices.device_problem(tun, "; load the tun module (modprobe tun)"):
        return (f"rootless mode cannot create TAPs: {why}; as root, let users open it "
                f"(`chmod 0666 {tun}`, as udev's default rule does) or run tapmig with sudo")
    return None


def refusal() -> str | None:
    """The one line tapmig prints when this user cannot run rootless, or None."""
    if why := missing():
        return (f"tapmig needs root or CAP_NET_ADMIN, or unprivileged user namespaces "
                f"for rootless mode, but {why}; run it with sudo")
    return tun_refusal()


def reexec(argv: Sequence[str]) -> None:
    """Become root of a private user + network namespace by running tapmig again there."""
    if why := refusal():
        raise HostError(why)
    os.execvpe("unshare", ["unshare", "--user", "--map-root-user", "--mount", "--net", "--",
                           sys.executable, "-m", "harness.cli.main", *argv],
               {**os.environ, ENV: "1"})


def enter() -> None:
    """Inside the namespaces: a private /run for pyroute2's named namespaces."""
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tapmig-run", "/run"],
                         capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise HostError(f"rootless mode: cannot mount a private /run: {res.stderr.strip()}")


def active() -> bool:
    return os.environ.get(ENV) == "1"
