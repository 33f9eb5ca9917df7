"""K paced UDP flows to the guest's echo (tapmig-guest echo), one log line per event.

ICMP echo requests with different ids all hash alike at the TAP, so one ICMP
prober exercises one queue. These flows differ in their UDP ports, so the TAP
spreads them over its queues, and each flow's replies say which guest CPU (and so
which queue pair) served it. Flow i goes from host port SPORT+i to guest port
PORT+i; the ports are fixed, so a later hop of a chain continues the same flows.

Output, one line per event (wall-clock times, kernel receive timestamps):
    [ts] sent flow=F seq=S
    [ts] reply flow=F seq=S cpu=C time=RTT ms
    [ts] send failed flow=F seq=S: REASON
On SIGINT/SIGTERM, or after --count requests per flow, it stops sending, waits
--drain seconds for the last replies, prints a summary line and exits 0.

Run inside the namespace: `nsenter --net=... python3 -m harness.probes.flow ...`.
"""

from __future__ import annotations

import argparse
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
    kernel_time,
    kernel_timestamps,
    readable,
    realtime,
)

MAGIC = b"TMGF"
REQUEST = struct.Struct("!4sHI")  # magic, flow, seq
PAYLOAD = 32  # request size: the header, padded
CPU_TAG = struct.Struct("!I")  # what tapmig-guest appends: the CPU that echoed


def request(flow: int, seq: int) -> bytes:
    return REQUEST.pack(MAGIC, flow, seq).ljust(PAYLOAD, b"\0")


def parse_reply(data: bytes) -> tuple[int, int, int] | None:
    """(flow, seq, cpu) of an echoed request, or None for anything else."""
    if len(data) != PAYLOAD + CPU_TAG.size:
        return None
    magic, flow, seq = REQUEST.unpack_from(data)
    if magic != MAGIC:
        return None
    return flow, seq, CPU_TAG.unpack_from(data, PAYLOAD)[0]


class FlowProber(Program):
    def __init__(self, target: str, port: int, sport: int, flows: int,
                 interval: float) -> None:
        self.target, self.port = target, port
        self.tick = interval / flows  # one request every tick, flows taking turns
        self.socks: list[socket.socket] = []
        for i in range(flows):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            kernel_timestamps(sock)
            sock.bind(("", sport + i))
            sock.setblocking(False)
            self.socks.append(sock)
        self.sent: dict[tuple[int, int], float] = {}
        self.seqs = [0] * flows
        self.turn = 0

    def send(self) -> None:
        flow = self.turn % len(self.socks)
        self.turn += 1
        self.seqs[flow] += 1
        seq = self.seqs[flow]
        now = time.time()
        self.sent[flow, seq] = now
        emit_at(now, f"sent flow={flow} seq={seq}")
        try:
            self.socks[flow].sendto(request(flow, seq), (self.target, self.port + flow))
        except OSError as exc:
            emit_at(now, f"send failed flow={flow} seq={seq}: {exc.strerror}")

    def receive(self, sock: socket.socket) -> None:
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(256, TIMESTAMP_SPACE)
            except (BlockingIOError, ConnectionRefusedError):
                return  # an ICMP port unreachable surfaces here: the request counts as lost
            ts = kernel_time(anc, time.time())
            got = parse_reply(data)
            if got is None or got[:2] not in self.sent:
                continue
            flow, seq, cpu = got
            rtt = 1000 * (ts - self.sent[flow, seq])
            emit_at(ts, f"reply flow={flow} seq={seq} cpu={cpu} time={rtt:.3f} ms")

    def poll(self, timeout: float) -> None:
        for sock in readable(self.socks, timeout):
            self.receive(sock)
        sys.stdout.flush()

    def run(self, count: int | None, drain: float) -> None:
        flows = len(self.socks)
        emit(f"FLOWS {flows} to {self.target} ports {self.port}-{self.port + flows - 1} "
             f"interval {1000 * self.tick * flows:g} ms")
        self.paced(Schedule(self.tick), self.send, self.poll,
                   lambda: count is None or self.turn < count * flows)
        end = time.monotonic() + drain
        while (left := end - time.monotonic()) > 0:
            self.poll(left)
        emit(f"flows {flows} sent {len(self.sent)}")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flow_probe", description=__doc__.splitlines()[0])
    p.add_argument("-k", "--flows", type=int, default=8)
    p.add_argument("-i", "--interval", type=float, default=0.008,
                   help="seconds between two requests of one flow")
    p.add_argument("--port", type=int, required=True, help="the guest's first echo port")
    p.add_argument("--sport", type=int, required=True, help="the host's first source port")
    p.add_argument("--count", type=int, default=None, help="requests per flow, then stop")
    p.add_argument("--drain", type=float, default=0.3, help="seconds to wait for late replies")
    p.add_argument("target")
    args = p.parse_args(argv)
    if not 1 <= args.flows <= 256 or not 0.0002 <= args.interval / args.flows <= 10:
        p.error("use 1 to 256 flows and at most 5000 requests per second in all")
    realtime()
    prober = FlowProber(args.target, args.port, args.sport, args.flows, args.interval)
    prober.stop_on_signals()
    prober.run(args.count, args.drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
