"""What would grow tapmig's memory over a soak stays bounded: checked as invariants of
the process after a few hundred VM cycles and netlink lookups, not as an RSS threshold
(RSS is noisy; `tapmig bench --chain N` prints its slope).

- qemu.qmp gives every QMP nickname (target-N) a logger that logging's manager keeps for
  good; the Monitor's client logger is unlisted, so loggerDict does not grow per VM.
- Every VM's event loop is closed, its console reader joined, its sockets closed, and
  nothing keeps a VM or its Monitor alive once it has been shut down.
- pyroute2 0.9 leaves the ACK of every RTM_GETLINK request in its socket's default
  queue, where each pinned ~2.3 KiB of heap; the Namespace looks links up by dumps, so
  that queue stays empty. No QEMU with a guest is started here, so no guest lock.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest

from harness.host.netns import Namespace
from harness.qemu.monitor import QMP_LOGGER, Monitor
from harness.qemu.vm import VM
from tests.support import REPO

pytestmark = pytest.mark.qemu_independent
EMPTY = ["-machine", "none", "-nodefaults", "-display", "none", "-S"]
CYCLES = 200  # ~40 ms each: what a chain does to tapmig per hop, a few hundred times
LOOKUPS = 300


def cycle(qemu: str, rundir: Path, name: str) -> VM:
    """One VM's life as a chain target has it: QMP, an event, the console, the quit."""
    with VM(name, qemu, EMPTY, rundir) as vm:
        vm.cmd("query-status")
        vm.cmd("migrate-set-capabilities",
               capabilities=[{"capability": "events", "state": True}])
        vm.cmd("cont")
        vm.wait_event("RESUME", timeout=5)
        vm.console_text()
    return vm


def open_loops() -> int:
    return sum(1 for o in gc.get_objects()
               if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed())


def state() -> dict[str, Any]:
    gc.collect()
    return {"loggers": sorted(logging.Logger.manager.loggerDict),
            "threads": sorted(t.name for t in threading.enumerate()),
            "fds": len(os.listdir("/proc/self/fd")), "open loops": open_loops()}


def test_vm_cycles_leave_the_process_as_they_found_it(tapmig_qemu: str,
                                                       tmp_path: Path) -> None:
    cycle(tapmig_qemu, tmp_path, "warm-up")  # first-use imports and loggers
    before = state()
    vms: weakref.WeakSet[VM] = weakref.WeakSet()
    monitors: weakref.WeakSet[Monitor] = weakref.WeakSet()
    for n in range(1, CYCLES + 1):
        vm = cycle(tapmig_qemu, tmp_path, f"target-{n}")
        assert vm.shutdown_how == "quit" and not vm.is_running()
        vms.add(vm)
        if vm._monitor is not None:  # the VM API has no handle on it; the test looks
            monitors.add(vm._monitor)
        del vm
    after = state()
    kept = sorted(set(after.pop("loggers")) - set(before.pop("loggers")))
    assert not kept, f"{len(kept)} loggers kept by logging after their VMs: {kept[:3]}"
    assert after == before
    assert (len(vms), len(monitors)) == (0, 0), "a shut-down VM is still referenced"


def test_the_client_logger_keeps_its_nickname_but_is_not_listed(
        tapmig_qemu: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="qemu.qmp")
    cycle(tapmig_qemu, tmp_path, "target-7")
    names = {r.name for r in caplog.records}
    assert f"{QMP_LOGGER}.target-7" in names  # handlers above still hear it, by name
    assert f"{QMP_LOGGER}.target-7" not in logging.Logger.manager.loggerDict
    caplog.set_level(logging.WARNING, logger="qemu.qmp")
    caplog.clear()
    cycle(tapmig_qemu, tmp_path, "target-8")  # the level set above holds for it too
    assert not [r for r in caplog.records if r.name.startswith(QMP_LOGGER)]


def default_queue(ns: Namespace) -> asyncio.Queue[Any]:
    """pyroute2's queue for messages no request waits for (pyroute2 0.9's layout)."""
    try:
        queue: asyncio.Queue[Any] = ns.ipr.pyroute2.asyncore.msg_queue.queues[0]
    except AttributeError:
        pytest.skip("this pyroute2 has no asyncore message queues (it predates 0.9)")
    return queue


def test_link_lookups_leave_no_netlink_messages_behind(
        tapmig_namespace: Namespace) -> None:
    ns = tapmig_namespace
    cidr, mac = "192.168.149.1/24", "52:54:00:12:34:01"
    ns.add_tap("tap0", mac=mac, cidr=cidr)
    ns.add_tap("tap1")
    queue = default_queue(ns)
    taps = ["tap0", "tap1"]
    for _ in range(LOOKUPS):  # what a new-TAP hop and a local one's same-TAP check do
        ns.move_host_side(taps[0], taps[1], cidr, mac)
        taps.reverse()
        assert ns.stats(taps[0]).ifindex == ns.index(taps[0])
    assert queue.qsize() == 0


MMAP_AFTER_A_LARGE_FREE = """
import ctypes, sys
from harness.proc import fix_mmap_threshold

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "fixed":
    fix_mmap_threshold()
passing = bytearray(4 << 20)  # mapped, as over any threshold; freed at once
del passing
before = libc.mallinfo2().hblkhd
block = bytearray(256 << 10)
print(libc.mallinfo2().hblkhd - before >= 256 << 10)
"""


@pytest.mark.parametrize(("threshold", "mapped"), [("glibc's", "False"), ("fixed", "True")])
def test_a_block_after_a_large_one_is_freed_is_mapped_only_with_the_threshold_fixed(
        threshold: str, mapped: str) -> None:
    """glibc raises its mmap threshold to the size of a mapped block once it is freed, so
    the next 256 KiB block comes from the heap, where freed it stays in RSS between
    live blocks (over a chain, a few KiB a hop); with the threshold fixed, as tapmig
    sets it (harness.proc.fix_mmap_threshold), it is mapped, and unmapped when freed."""
    done = subprocess.run([sys.executable, "-c", MMAP_AFTER_A_LARGE_FREE, threshold],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == mapped
