"""The probers: ICMP's packet maths by hand, the schedule they share, and real runs in a
namespace (ICMP's 1 kHz pace, TCP's connect retried while the host's address moves)."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.analysis import tcp_stream
from harness.analysis.ping import analyze, parse
from harness.host.netns import Namespace
from harness.probes import base, tcp
from harness.probes.base import Schedule
from harness.probes.icmp import (
    ECHO_REPLY,
    ECHO_REQUEST,
    PAYLOAD,
    checksum,
    echo_request,
    main,
    parse_reply,
)
from tests.support import REPO

# --- checksum ---------------------------------------------------------------------------


def test_checksum_rfc1071_example() -> None:
    # RFC 1071 section 3: 0001 + f203 + f4f5 + f6f7 = 2ddf0, folded ddf2, complement 220d.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert checksum(data) == 0x220D
    # Data followed by its own checksum sums to ffff, whose complement is 0.
    assert checksum(data + b"\x22\x0d") == 0


def test_checksum_folds_the_carry_back_in() -> None:
    # ffff + 0001 = 1 0000 -> 0000 + 1 = 0001 -> complement fffe.
    assert checksum(b"\xff\xff\x00\x01") == 0xFFFE


def test_checksum_pads_odd_lengths_with_a_zero_byte() -> None:
    assert checksum(b"\x01\x02\x03") == checksum(b"\x01\x02\x03\x00") == 0xFBFD  # ~0x0402


# --- echo_request -----------------------------------------------------------------------


def test_echo_request_layout() -> None:
    packet = echo_request(0x1234, 65536 + 7)  # the wire holds only the low 16 bits
    assert len(packet) == 8 + PAYLOAD == 64
    kind, code, _, ident, seq = struct.unpack("!BBHHH", packet[:8])
    assert (kind, code, ident, seq) == (ECHO_REQUEST, 0, 0x1234, 7)
    assert packet[8:] == bytes(PAYLOAD)
    # A receiver recomputing over the whole message, checksum field included, gets 0.
    assert checksum(packet) == 0


def test_echo_requests_differ_only_in_seq_and_checksum() -> None:
    a, b = echo_request(1, 1), echo_request(1, 2)
    assert a[:2] == b[:2] and a[4:6] == b[4:6] and a[8:] == b[8:]
    assert a[6:8] != b[6:8] and a[2:4] != b[2:4]


# --- parse_reply ------------------------------------------------------------------------


def ipv4(payload: bytes, ttl: int = 61, options: bytes = b"") -> bytes:
    """An IPv4 header (protocol ICMP, 10.0.0.2 -> 10.0.0.1) in front of `payload`."""
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), 0, 0,
                         ttl, 1, 0, bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]))
    return header + options + payload


def icmp(kind: int, ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + bytes(PAYLOAD)
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


def test_parse_reply_reads_seq_and_ttl() -> None:
    assert parse_reply(ipv4(icmp(ECHO_REPLY, 0x4242, 513)), 0x4242) == (513, 61)


def test_parse_reply_skips_ip_options() -> None:
    packet = ipv4(icmp(ECHO_REPLY, 7, 9), ttl=3, options=b"\x01\x01\x01\x00")  # NOPs, EOL
    assert packet[0] == 0x46
    assert parse_reply(packet, 7) == (9, 3)


@pytest.mark.parametrize("packet", [
    ipv4(icmp(ECHO_REPLY, 0x4243, 1)),  # another prober's reply
    ipv4(icmp(ECHO_REQUEST, 0x4242, 1)),  # our own request, as a raw socket sees it on lo
    ipv4(icmp(3, 0x4242, 1)),  # destination unreachable
    ipv4(icmp(ECHO_REPLY, 0x4242, 1))[:27],  # cut inside the ICMP header
], ids=["other-ident", "echo-request", "unreachable", "truncated"])
def test_parse_reply_ignores_what_is_not_our_reply(packet: bytes) -> None:
    assert parse_reply(packet, 0x4242) is None


def test_main_refuses_an_unbounded_rate() -> None:
    # Checked before any socket is opened: no root needed.
    with pytest.raises(SystemExit) as exc:
        main(["-i", "0.0001", "127.0.0.1"])
    assert exc.value.code == 2


# --- what the probers share (harness.probes.base) ----------------------------------------


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_schedule_keeps_its_slots_without_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    with monkeypatch.context() as m:
        m.setattr(time, "monotonic", clock)  # as base reads it
        schedule = Schedule(0.001)
        assert schedule.due() and not schedule.due()
        clock.now += 0.0004  # a send that came late within its slot does not shift the rest
        assert not schedule.due()
        clock.now += 0.0007
        assert schedule.due() and schedule.next == pytest.approx(100.002)
        assert schedule.wait() == pytest.approx(0.0009)


@pytest.mark.parametrize(("catch_up", "next_slot"), [(False, 100.036), (True, 100.035)])
def test_schedule_never_bursts_after_a_stall(monkeypatch: pytest.MonkeyPatch, catch_up: bool,
                                             next_slot: float) -> None:
    clock = Clock()
    with monkeypatch.context() as m:
        m.setattr(time, "monotonic", clock)  # as base reads it
        schedule = Schedule(0.001, catch_up=catch_up)
        assert schedule.due()
        clock.now += 0.035  # descheduled for 35 slots: one late send, not 35
        assert schedule.due()
        assert schedule.next == pytest.approx(next_slot)
        assert schedule.due() is catch_up  # catch_up: one more at once, then the slots
        assert not schedule.due()


def test_kernel_time_reads_the_timestamp_or_keeps_the_default() -> None:
    stamp = (socket.SOL_SOCKET, base.SCM_TIMESTAMPNS, base.TIMESPEC.pack(12, 500_000_000))
    other = (socket.SOL_IP, 8, bytes(16))  # IP_TTL-like: not a timestamp
    assert base.kernel_time([other, stamp], 1.0) == 12.5
    assert base.kernel_time([other], 1.0) == 1.0


# --- real runs, each in a fresh namespace with only lo: nothing in the host's ----------------


@contextmanager
def prober(ns: Namespace, module: str, *args: str, limit: float = 20) -> Iterator[Probe]:
    """python -m harness.probes.MODULE ARGS in the namespace, killed after limit seconds
    whatever happens, so that no read below can wait forever."""
    proc = subprocess.Popen([*ns.exec_prefix(), sys.executable, "-m", f"harness.probes.{module}",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    killer = threading.Timer(limit, proc.kill)
    killer.start()
    try:
        yield Probe(proc)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait()


class Probe:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.proc, self.stdout, self.out = proc, proc.stdout, ""

    def until(self, needle: str) -> str:
        """Read up to the first line holding needle, and return it."""
        while line := self.stdout.readline():
            self.out += line
            if needle in line:
                return line
        pytest.fail(f"the prober ended before writing {needle!r}: {self.out[-2000:]}")

    def finish(self, interrupt: bool = True) -> int:
        """SIGINT it (as the driver stops it) and read to EOF; its exit status."""
        if interrupt:
            self.proc.send_signal(signal.SIGINT)
        self.out += self.stdout.read()
        return self.proc.wait(timeout=10)


def test_prober_runs_at_1khz_in_a_namespace(tapmig_namespace: Namespace) -> None:
    with prober(tapmig_namespace, "icmp", "-i", "0.001", "127.0.0.1") as probe:
        # A fixed number of requests rather than a wall-clock time: interpreter start-up
        # and a loaded host only make the run longer, not the count smaller.
        for _ in range(300):
            probe.until(" sent icmp_seq=")
        status = probe.finish()
    out = probe.out
    assert status == 0, out[-2000:]
    assert out.startswith("PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n")
    assert "--- 127.0.0.1 ping statistics ---" in out
    log = parse(out)
    a = analyze(log)
    assert log.transmitted is not None and log.transmitted >= 300
    assert a.replies >= log.transmitted - 2  # one may be in flight at SIGINT
    assert not any(p.error or p.duplicate for p in log.lines)
    # The pace is the point of this prober: 1 ms where iputils falls to 10 ms. Measured
    # from its own send times; the schedule never bursts, so the mean is at least the
    # interval, and 2 ms leaves room for a loaded host while still telling 1 from 10.
    assert a.interval_ms is not None and 0.8 <= a.interval_ms <= 2.0
    assert sorted(log.sent) == list(range(1, log.transmitted + 1))


# The TCP prober's connect while the host's address moves between TAPs: an address that
# is not there yet (ENETUNREACH), then no listener yet (ECONNREFUSED), then the echo.
MOVING = "10.77.0.2"  # exists only inside the test's namespace
ECHO = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
conn, _ = server.accept()
while data := conn.recv(65536):
    conn.sendall(data)
"""


def test_tcp_probe_retries_connect_while_the_address_moves(tapmig_namespace: Namespace) -> None:
    ns = tapmig_namespace
    with prober(ns, "tcp", "-i", "0.01", "--drain", "2", MOVING, "5000") as probe:
        probe.until("connect retry 1: Network is unreachable")
        ns.add_address("lo", f"{MOVING}/32")
        probe.until(": Connection refused")
        echo = subprocess.Popen([*ns.exec_prefix(), sys.executable, "-c", ECHO, MOVING, "5000"],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert echo.stdout is not None and echo.stdout.readline() == "listening\n"
            probe.until("] connected ")
            probe.until("] rx seq=5")
            status = probe.finish()
        finally:
            echo.kill()
            echo.wait()
    assert status == 0, probe.out[-2000:]
    retries = re.findall(r"^\[\d+\.\d+\] connect retry (\d+): (.+)$", probe.out, re.M)
    assert [int(n) for n, _ in retries] == list(range(1, len(retries) + 1))
    assert {why for _, why in retries} == {"Network is unreachable", "Connection refused"}
    log = tcp_stream.parse(probe.out)  # the analysis reads past the retry lines
    assert log.error is None and log.connection.endswith(f" -> {MOVING}:5000")
    assert log.summary["connect_retries"] == len(retries) == len(log.retries)
    result = tcp_stream.analyze(log, (log.connected or 0.0, float("inf")))
    assert result.connect_retries == len(retries)  # what the run's record says it retried
    assert result.connect_retry_why == retries[-1][1]
    assert log.summary["echoed"] == log.summary["messages"] == len(log.tx) == len(log.rx) > 5


def test_tcp_probe_gives_up_after_connect_retry(tapmig_namespace: Namespace) -> None:
    with prober(tapmig_namespace, "tcp", "--connect-retry", "0.3", MOVING, "5000") as probe:
        status = probe.finish(interrupt=False)
    assert status == 1, probe.out[-2000:]
    lines = probe.out.splitlines()
    assert 2 <= len(lines) - 1 <= 0.3 / tcp.RETRY_PAUSE_S  # a retry line per pause, no more
    assert all(" connect retry " in line for line in lines[:-1])
    log = tcp_stream.parse(probe.out)
    assert log.error is not None
    assert log.error[1:] == ("connect", f"{MOVING}:5000: Network is unreachable")
