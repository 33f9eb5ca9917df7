"""The leak detector on real processes: one that leaks fds and TAP queues on purpose, and
one that churns them without leaking. Each "hop" is a request to the process; after it
the footprint is sampled from /proc and netlink exactly as a chain samples its QEMU, and
the chain summary must flag the first and not the second."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.host.netns import Namespace
from harness.proc import die_with_parent
from harness.record import RunRecord
from harness.report.chain_summary import chain_summaries
from harness.run import footprint

pytestmark = pytest.mark.usefixtures("tapmig_root_with_tun")

# A process that, on each line it reads, opens /dev/null and a new queue of the
# multiqueue tap0 (TUNSETIFF with IFF_MULTI_QUEUE). "leak" keeps them all; "churn"
# closes the previous pair first, so its counts stay put while its fds change.
CHILD = r"""
import fcntl, os, struct, sys
TUNSETIFF, FLAGS = 0x400454CA, 0x0002 | 0x1000 | 0x4000 | 0x0100  # TAP NO_PI VNET_HDR MQ
held = []
for line in sys.stdin:
    if sys.argv[1] == "churn":
        for fd in held:
            os.close(fd)
        held.clear()
    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", b"tap0", FLAGS))
    held += [os.open("/dev/null", os.O_RDONLY), tun]
    print("ok", flush=True)
"""
HOPS = 12


@contextmanager
def process(ns: Namespace, how: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([*ns.exec_prefix(), sys.executable, "-c", CHILD, how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def chain_of(ns: Namespace, how: str) -> list[RunRecord]:
    """HOPS hops of a real process, each sampled like a chain's serving QEMU."""
    recs = []
    with process(ns, how) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for hop in range(1, HOPS + 1):
            proc.stdin.write("hop\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "ok\n"
            recs.append(RunRecord(mode="local", qemu=sys.executable, qemu_version="-",
                                  accel="tcg", guest="-", chain=how, hop=hop,
                                  footprint=footprint.sample(proc.pid, ns).to_json()))
    return recs


@pytest.fixture
def tap_ns(tapmig_namespace: Namespace) -> Namespace:
    tapmig_namespace.add_tap("tap0", multi_queue=True)
    return tapmig_namespace


def test_the_flag_goes_up_on_a_process_that_leaks(tap_ns: Namespace) -> None:
    recs = chain_of(tap_ns, "leak")
    first, last = recs[0].footprint, recs[-1].footprint
    assert first is not None and last is not None
    assert last["qemu_tun_fds"] - first["qemu_tun_fds"] == HOPS - 1
    assert last["tun_iff"] == {"tap0": HOPS}  # fdinfo's iff: names the TAP of each fd
    assert last["tap_queues"]["tap0"][0] == HOPS  # netlink: queues attached to tap0
    summary = chain_summaries(recs)[0]
    leaking = {f["metric"]: f for f in summary["findings"] if f["flagged"]}
    assert set(leaking) == {"qemu_fds", "qemu_tun_fds", "tap_queues_attached"}
    assert leaking["qemu_fds"]["per_hop"] == 2 and leaking["qemu_tun_fds"]["per_hop"] == 1
    assert all(line.startswith("LEAK: leak: ") for line in summary["flags"])


def test_no_flag_on_a_process_that_churns_without_leaking(tap_ns: Namespace) -> None:
    recs = chain_of(tap_ns, "churn")
    counts = {(r.footprint or {})["qemu_fds"] for r in recs}
    assert len(counts) == 1
    summary = chain_summaries(recs)[0]
    assert summary["flags"] == [], summary["flags"]
    assert summary["last"]["tap_queues"]["tap0"][0] == 1


def test_process_fds_counts_and_names_the_taps(tap_ns: Namespace) -> None:
    with process(tap_ns, "leak") as proc:
        assert proc.stdin is not None and proc.stdout is not None
        counts = []
        for _ in range(2):  # the first answer also proves the child is up
            proc.stdin.write("hop\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "ok\n"
            counts.append(footprint.process_fds(proc.pid))
        (before, _), (after, iffs) = counts
        assert after == before + 2 and iffs == {"tap0": 2}
        assert footprint.rss_kib(proc.pid) > 0 and footprint.rss_kib(proc.pid, "RssAnon") > 0
    assert footprint.interfaces(tap_ns) == ["lo", "tap0"]


@pytest.mark.skipif(footprint.heap_in_use_kib() is None, reason="this libc has no mallinfo2")
def test_heap_in_use_counts_what_malloc_handed_out_and_not_what_it_holds() -> None:
    """An RSS that climbs can be heap freed but held; the heap figure tells that from a
    leak. 8 MiB handed out shows in it, and goes when given back."""
    before = footprint.heap_in_use_kib() or 0
    block = bytearray(8 << 20)
    during = footprint.heap_in_use_kib() or 0
    del block
    after = footprint.heap_in_use_kib() or 0
    assert during - before >= 8 << 10
    assert after - before < 1 << 10
