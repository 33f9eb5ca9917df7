"""The host, refused in one line before anything starts: root, /dev/net/tun, iputils.
"""

from __future__ import annotations

from harness.errors import HostError
from harness.host import rootless
from harness.host.devices import TUN, tun_problem
from harness.probes import driver


def check_host() -> None:
    """Refuse early, in one line, what would otherwise fail deep inside a run."""
    if not rootless.privileged():
        raise HostError("tapmig needs root or CAP_NET_ADMIN to create namespaces and TAPs; "
                        "run it with sudo")
    if why := tun_problem():
        raise HostError(f"cannot create TAPs: {why}; as root, `chmod 0666 {TUN}` "
                        "or run tapmig with sudo")
    driver.require_iputils()
