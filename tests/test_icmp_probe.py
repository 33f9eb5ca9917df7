"""harness.probes.icmp: the packet maths by hand, and one real run in a namespace."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest

from harness.analysis.ping import analyze, parse
from harness.host.netns import Namespace
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


# --- a real run -------------------------------------------------------------------------


def test_prober_runs_at_1khz_in_a_namespace(tapmig_namespace: Namespace) -> None:
    """In a fresh namespace with only lo: no other traffic, and nothing in the host's."""
    argv = [*tapmig_namespace.exec_prefix(), sys.executable, "-m", "harness.probes.icmp",
            "-i", "0.001", "127.0.0.1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    # Should it ignore SIGINT, the read below would wait forever.
    killer = threading.Timer(10, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        # Time the run from its first line: interpreter start-up on a loaded host can
        # take a good part of a second.
        out = proc.stdout.readline()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out += proc.stdout.read()  # to EOF, through the same buffer as readline()
        proc.wait(timeout=10)
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-2000:]
    assert out.startswith("PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n")
    assert "--- 127.0.0.1 ping statistics ---" in out
    log = parse(out)
    a = analyze(log)
    # ~500 requests in 0.5 s; far fewer would mean it is not keeping its pace.
    assert log.transmitted is not None and log.transmitted >= 250
    assert a.replies >= log.transmitted - 2  # one may be in flight at SIGINT
    assert not any(p.error or p.duplicate for p in log.lines)
    assert a.interval_ms is not None and 0.8 <= a.interval_ms <= 1.5
    assert sorted(log.sent) == list(range(1, log.transmitted + 1))
