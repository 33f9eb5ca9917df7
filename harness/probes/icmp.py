"""A paced ICMP echo prober that keeps its 1 ms pace while the link is down.

iputils ping paces at 1 ms only while replies flow: as soon as a reply is
outstanding and the next send is less than a clock tick (10 ms) away, it sleeps
10 ms instead. So inside an outage, exactly where the resolution matters, it
samples every 10 ms. This prober sends on a fixed 1 ms schedule regardless,
takes kernel receive timestamps (SO_TIMESTAMPNS), and prints the very lines of
`ping -D -O` plus one "[ts] sent icmp_seq=N" line per request, so one parser
and `tapmig analyze` serve both.

Run inside the namespace: `nsenter --net=... python3 -m harness.probes.icmp -i 0.001 HOST`.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence

from harness.probes.base import (
    TIMESTAMP_SPACE,
    Program,
    Schedule,
    emit,
    emit_at,
    emit_now,
    kernel_time,
    kernel_timestamps,
    readable,
    realtime,
)

ECHO_REQUEST, ECHO_REPLY = 8, 0
PAYLOAD = 56


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def echo_request(ident: int, seq: int) -> bytes:
    payload = bytes(PAYLOAD)
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq & 0xFFFF)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + payload), ident,
                       seq & 0xFFFF) + payload


def parse_reply(packet: bytes, ident: int) -> tuple[int, int] | None:
    """(seq, ttl) of an echo reply to us, from a raw IPv4 packet."""
    ihl = (packet[0] & 0x0F) * 4
    if len(packet) < ihl + 8:
        return None
    kind, _, _, rid, seq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
    if kind != ECHO_REPLY or rid != ident:
        return None
    return seq, packet[8]


class IcmpProber(Program):
    def __init__(self, target: str, interval: float) -> None:
        self.target = target
        self.interval = interval
        self.ident = os.getpid() & 0xFFFF
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        kernel_timestamps(self.sock)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock.setblocking(False)
        self.sent: dict[int, float] = {}  # unwrapped seq -> wall-clock send time
        self.answered: set[int] = set()
        self.seq = 0

    def send(self) -> None:
        if self.seq and self.seq not in self.answered:
            emit_now(f"no answer yet for icmp_seq={self.seq & 0xFFFF}")
        self.seq += 1
        now = time.time()
        self.sent[self.seq] = now
        # Not a ping line: the exact send time, so the outage's first edge is known
        # to one interval (-O alone leaves the first unanswered request's time open).
        emit_at(now, f"sent icmp_seq={self.seq & 0xFFFF}")
        try:
            self.sock.sendto(echo_request(self.ident, self.seq), (self.target, 0))
        except OSError as exc:
            emit_at(now, f"From {self.target} icmp_seq={self.seq & 0xFFFF} "
                    f"send failed: {exc.strerror}")

    def receive(self) -> None:
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(2048, TIMESTAMP_SPACE)
            except BlockingIOError:
                return
            ts = kernel_time(anc, time.time())
            got = parse_reply(data, self.ident)
            if got is None:
                continue
            seq16, ttl = got
            # The newest sent seq with these low 16 bits.
            seq = self.seq - ((self.seq - seq16) & 0xFFFF)
            if seq not in self.sent:
                continue
            dup = " (DUP!)" if seq in self.answered else ""
            self.answered.add(seq)
            rtt = 1000 * (ts - self.sent[seq])
            emit_at(ts, f"{PAYLOAD + 8} bytes from {self.target}: "
                    f"icmp_seq={seq16} ttl={ttl} time={rtt:.3f} ms{dup}")

    def poll(self, timeout: float) -> None:
        readable([self.sock], timeout)
        self.receive()
        sys.stdout.flush()

    def run(self) -> None:
        emit(f"PING {self.target} ({self.target}) {PAYLOAD}({PAYLOAD + 28}) bytes of data.")
        start = time.monotonic()
        self.paced(Schedule(self.interval, start), self.send, self.poll)
        elapsed = int(1000 * (time.monotonic() - start))
        tx, rx = self.seq, len(self.answered)
        loss = 100 * (tx - rx) // tx if tx else 0
        emit(f"\n--- {self.target} ping statistics ---")
        emit(f"{tx} packets transmitted, {rx} received, {loss}% packet loss, "
             f"time {elapsed}ms")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="icmp_probe", description=__doc__.splitlines()[0])
    p.add_argument("-i", "--interval", type=float, default=0.001)
    p.add_argument("target")
    args = p.parse_args(argv)
    if not 0.0002 <= args.interval <= 10:
        p.error("interval must be between 0.0002 and 10 seconds (bounded probe rate)")
    realtime()
    prober = IcmpProber(args.target, args.interval)
    prober.stop_on_signals()
    prober.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
