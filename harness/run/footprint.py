"""What a QEMU and tapmig hold after each hop: fds, TAP queues, memory, interfaces.

The bugs of fd passing show on repetition, not in one migration: a target that keeps
one fd too many, a queue left attached to the TAP, an interface never deleted. A chain
samples this after every hop, and harness.analysis.trend turns the series into leak flags.

Everything is read from /proc and netlink, as the kernel reports it. fdinfo of a TUN
fd on this kernel (6.x) prints only `iff:` (the TAP it is attached to), not whether
its queue is enabled; the TAP's attached and disabled queue counts come from netlink
(IFLA_TUN_NUM_QUEUES, IFLA_TUN_NUM_DISABLED_QUEUES), as `ip -d link` shows them.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from harness.host.netns import Namespace
from harness.host.tunfiles import fd_targets, tun_files


@dataclass(frozen=True)
class Footprint:
    """One sample, taken once the hop's target serves the guest and has been verified."""

    qemu_fds: int
    qemu_tun_fds: int
    tun_iff: dict[str, int]  # TAP name -> QEMU's TUN fds attached to it (fdinfo "iff:")
    tap_queues: dict[str, list[int]]  # TAP name -> [attached, disabled] queues (netlink)
    qemu_rss_kib: int  # VmRSS, which counts the guest RAM pages QEMU touched in /dev/shm
    qemu_anon_kib: int  # RssAnon: QEMU's private memory, where a leak would show
    tapmig_rss_kib: int
    tapmig_fds: int  # tapmig's own: QMP connections, netlink sockets, probe pipes
    interfaces: list[str]
    tapmig_heap_kib: int | None = None  # malloc's bytes in use (heap_in_use_kib)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rss_kib(pid: int | str = "self", key: str = "VmRSS") -> int:
    """Current resident memory (not the peak): growth is what a leak shows."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


class _Mallinfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33 and later), every field a size_t."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:  # not glibc, or older than 2.33
        return None
    fn.restype = _Mallinfo2
    return cast(Callable[[], _Mallinfo2], fn)


def heap_in_use_kib() -> int | None:
    """What tapmig's malloc has handed out and not had back, in every arena and mmap.

    RSS also counts heap that is free but held (fragments the allocator cannot give
    back), which grows over the first few hundred hops of a chain and then levels off;
    a native leak grows this instead. None where the libc has no mallinfo2."""
    fn = _mallinfo2()
    if fn is None:
        return None
    info = fn()
    return int((info.uordblks + info.hblkhd) // 1024)


def _nla(msg: Any, *path: str) -> Any:
    """A nested netlink attribute, or None where any level is absent."""
    for name in path:
        if msg is None:
            return None
        msg = msg.get_attr(name)
    return msg


def tap_queues(ns: Namespace) -> dict[str, list[int]]:
    """[attached, disabled] queues of every TUN/TAP link in the namespace."""
    out = {}
    for link in ns.ipr.get_links():
        data = _nla(link, "IFLA_LINKINFO", "IFLA_INFO_DATA")
        if _nla(link, "IFLA_LINKINFO", "IFLA_INFO_KIND") != "tun" or data is None:
            continue
        attached = data.get_attr("IFLA_TUN_NUM_QUEUES")
        disabled = data.get_attr("IFLA_TUN_NUM_DISABLED_QUEUES")
        out[str(link.get_attr("IFLA_IFNAME"))] = [int(attached or 0), int(disabled or 0)]
    return out


def interfaces(ns: Namespace) -> list[str]:
    return sorted(str(link.get_attr("IFLA_IFNAME")) for link in ns.ipr.get_links())


def process_fds(pid: int | str) -> tuple[int, dict[str, int]]:
    """Total open fds of a process, and its TUN fds counted by the TAP they are on."""
    iffs = Counter(f.tap or "(detached)" for f in tun_files(pid))
    return len(fd_targets(pid)), dict(sorted(iffs.items()))


def sample(pid: int, ns: Namespace) -> Footprint:
    """tapmig's own figures count live memory only: a hop's cyclic garbage (its QMP
    clients' loops, tracebacks) is collected first, as Python's rare full collections
    would leave ~10 KiB a hop to be read as growth, then free it by the MiB."""
    gc.collect()
    total, iffs = process_fds(pid)
    return Footprint(qemu_fds=total, qemu_tun_fds=sum(iffs.values()), tun_iff=iffs,
                     tap_queues=tap_queues(ns), qemu_rss_kib=rss_kib(pid),
                     qemu_anon_kib=rss_kib(pid, "RssAnon"), tapmig_rss_kib=rss_kib(),
                     tapmig_fds=len(fd_targets("self")), interfaces=interfaces(ns),
                     tapmig_heap_kib=heap_in_use_kib())
