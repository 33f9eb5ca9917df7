"""A private network namespace and its TAPs, through pyroute2 (netlink, no `ip`).

All test traffic stays inside the namespace: the 192.168.x addresses never
touch the root namespace. Names carry tapmig's PID, so parallel runs never
collide and a later run can reap what a killed one left behind.

Links are found by a dump, never by an RTM_GETLINK request (pyroute2's link_lookup(ifname=)
and get_links(index)): the kernel answers such a request with the link and then an ACK,
and pyroute2 0.9 has freed the request's queue by the time the ACK comes, so the ACK
stays in the socket's default queue for good. An ACK is some 90 bytes, but each one held
between blocks that are freed keeps them in the malloc heap: about 2.3 KiB of RSS per
lookup (1.5 KiB of it free but held, by mallinfo2), and a new-TAP hop made six.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from harness.errors import HostError, InternalError, NetnsFailed
from harness.proc import PREFIX, owner_pid, pid_alive, signals_deferred, unique_name

NETNS_DIR = Path("/run/netns")
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkStats:
    ifindex: int
    rx_packets: int
    tx_packets: int


class Netlink:
    """pyroute2's NetNS, each request made with SIGINT and SIGTERM held until it ends.

    pyroute2 runs a request in an asyncio loop of its own, and what a signal handler
    raises inside that loop's callbacks does not reach the caller: a SIGTERM that landed
    in get_links() was lost (the run went on and exited 0, 1 run in 30), or came back as
    "RuntimeError: Event loop stopped before Future completed". Held, the signal is taken
    once the request is done, a few milliseconds later (harness.proc.signals_deferred).
    """

    def __init__(self, ipr: NetNS) -> None:
        self.pyroute2 = ipr  # for what these methods do not cover (a test reads its queues)

    def get_links(self, *args: Any, **kwargs: Any) -> Any:
        with signals_deferred():
            return self.pyroute2.get_links(*args, **kwargs)

    def link(self, *args: Any, **kwargs: Any) -> Any:
        with signals_deferred():
            return self.pyroute2.link(*args, **kwargs)

    def addr(self, *args: Any, **kwargs: Any) -> Any:
        with signals_deferred():
            return self.pyroute2.addr(*args, **kwargs)

    def close(self) -> None:
        with signals_deferred():
            self.pyroute2.close()


class Namespace:
    """A named netns that exists exactly as long as the `with` block."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique_name()
        self._ipr: Netlink | None = None
        self._owner = os.getpid()

    def __enter__(self) -> Namespace:
        try:
            netns.create(self.name)
        except OSError as exc:
            raise HostError(f"cannot create network namespace {self.name}: {exc}; "
                              "run as root or with CAP_NET_ADMIN and CAP_SYS_ADMIN") from exc
        try:
            with signals_deferred():
                self._ipr = Netlink(NetNS(self.name))
            self.set_up("lo")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if os.getpid() != self._owner:
            return  # a forked child (pyroute2 forks for netns work) unwinding: not ours
        if self._ipr is not None:
            try:
                for link in self._ipr.get_links():
                    if link.get("ifname") != "lo":
                        self._ipr.link("del", index=link["index"])
            except (NetlinkError, OSError) as exc:
                # The namespace removal below takes the links with it, and raises if it
                # fails: nothing is left behind, but a failed delete is not normal.
                LOG.warning("namespace %s: deleting its links failed (%s); removing the "
                            "namespace takes them", self.name, exc)
            self._ipr.close()
            self._ipr = None
        remove(self.name)

    @property
    def ipr(self) -> Netlink:
        if self._ipr is None:
            raise InternalError(f"namespace {self.name} is used only inside its with block")
        return self._ipr

    def exec_prefix(self) -> list[str]:
        """Run a program inside the namespace (nsenter execs it, so its PID is the program's)."""
        return ["nsenter", f"--net={NETNS_DIR / self.name}"]

    def _link(self, ifname: str) -> Any:
        """The link's RTM_NEWLINK message, from a dump (see the module's docstring)."""
        for link in self.ipr.get_links():
            if link.get_attr("IFLA_IFNAME") == ifname:
                return link
        raise NetnsFailed(f"no interface {ifname} in namespace {self.name}", "lookup",
                          self.name, ifname)

    def index(self, ifname: str) -> int:
        return int(self._link(ifname)["index"])

    def add_tap(self, ifname: str, mac: str | None = None, cidr: str | None = None,
                up: bool = True, multi_queue: bool = True) -> int:
        """A persistent TAP (no_pi, vnet_hdr), multiqueue as QEMU's queues>1 needs.

        QEMU opens a single-queue netdev without IFF_MULTI_QUEUE, and the kernel
        refuses that on a multiqueue TAP, so queues=1 needs a single-queue TAP.
        """
        try:
            self.ipr.link("add", ifname=ifname, kind="tuntap", mode="tap",
                          ifr={"no_pi": 1, "vnet_hdr": 1, "multi_queue": int(multi_queue)})
        except (NetlinkError, OSError) as exc:
            raise HostError(f"cannot create TAP {ifname}: {exc}; check that /dev/net/tun "
                              "exists and you have CAP_NET_ADMIN") from exc
        idx = self.index(ifname)
        if mac:
            self.ipr.link("set", index=idx, address=mac)
        if cidr:
            self.add_address(ifname, cidr)
        if up:
            self.set_up(ifname)
        return idx

    def add_address(self, ifname: str, cidr: str) -> None:
        addr, plen = cidr.split("/")
        self.ipr.addr("add", index=self.index(ifname), address=addr, prefixlen=int(plen))

    def set_up(self, ifname: str, up: bool = True) -> None:
        self._set_state(self.index(ifname), up)

    def _set_state(self, index: int, up: bool) -> None:
        self.ipr.link("set", index=index, state="up" if up else "down")

    def move_host_side(self, src: str, dst: str, cidr: str, mac: str) -> None:
        """The new-TAP switch: what management software does after migrating to a new TAP."""
        addr, plen = cidr.split("/")
        src_index, dst_index = self.index(src), self.index(dst)
        self._set_state(dst_index, False)
        self._set_state(src_index, False)
        self.ipr.addr("del", index=src_index, address=addr, prefixlen=int(plen))
        self.ipr.link("set", index=dst_index, address=mac)
        self.ipr.addr("add", index=dst_index, address=addr, prefixlen=int(plen))
        self._set_state(dst_index, True)

    def stats(self, ifname: str) -> LinkStats:
        link = self._link(ifname)
        st = link.get("IFLA_STATS64") or link.get("IFLA_STATS")
        return LinkStats(int(link["index"]), int(st["rx_packets"]), int(st["tx_packets"]))


def remove(name: str) -> None:
    try:
        netns.remove(name)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise NetnsFailed(f"cannot remove network namespace {name}: {exc}", "remove", name,
                          errno=exc.errno) from exc


def list_ours() -> list[str]:
    return [n for n in netns.listnetns() if n.startswith(PREFIX)]


def reap_orphans() -> list[str]:
    """Remove namespaces whose tapmig process is gone (it was killed outright)."""
    reaped = []
    for name in list_ours():
        pid = owner_pid(name)
        if pid is not None and not pid_alive(pid):
            remove(name)
            reaped.append(name)
    return reaped
