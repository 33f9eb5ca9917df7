"""Device nodes a run may need (/dev/net/tun, /dev/kvm, /dev/vhost-net), and why one is unusable.

Each check answers with the reason a device is unusable, or None, so that the
CLI refuses the host in one line that names the fix, and a test skips naming it.
"""

from __future__ import annotations

import os
from pathlib import Path

TUN = Path("/dev/net/tun")
KVM = Path("/dev/kvm")
VHOST_NET = Path("/dev/vhost-net")


def device_problem(path: Path, missing_hint: str = "") -> str | None:
    """Why a device node is unusable (missing, or refusing to open), or None."""
    if not path.exists():
        return f"{path} is missing{missing_hint}"
    try:
        os.close(os.open(path, os.O_RDWR))
    except OSError as exc:
        return f"{path} cannot be opened: {exc.strerror}"
    return None


def tun_problem() -> str | None:
    return device_problem(TUN, "; load the tun module (modprobe tun)")


def kvm_problem() -> str | None:
    return device_problem(KVM)


def vhost_net_problem() -> str | None:
    return device_problem(VHOST_NET, " (no vhost-net module or device on this host)")
