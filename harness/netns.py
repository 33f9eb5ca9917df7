"""Namespaces and TAPs: a private network namespace that lives as long as its `with`
block, and the TAPs, addresses and links inside it, through netlink (pyroute2).

Namespace names carry tapmig's PID, so parallel runs never collide and a later run can
remove what a killed one left: list_ours lists tapmig's namespaces, reap_orphans removes
those whose process is gone, remove removes one by name. A failed lookup or removal
raises NetnsFailed, whose fields say which operation, namespace and interface.

    with Namespace() as ns:
        ns.add_tap("tap0", cidr="192.168.100.1/24")
        stats = ns.stats("tap0")

Exposes: Namespace, LinkStats, NetnsFailed, list_ours, reap_orphans, remove

This is the public face of harness.host.netns; harness's own code imports harness.host.
"""

from __future__ import annotations

from harness.errors import NetnsFailed
from harness.host.netns import LinkStats, Namespace, list_ours, reap_orphans, remove

__all__ = ["LinkStats", "Namespace", "NetnsFailed", "list_ours", "reap_orphans", "remove"]
