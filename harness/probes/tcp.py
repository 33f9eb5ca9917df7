"""The host end of a TCP connection kept busy across a migration.

It connects to the guest's echo (busybox `nc -ll -p PORT -e cat`), sends one
64-byte, sequence-numbered message every --interval, and checks every echoed
byte: each message exactly once and in order. A packet the migration drops
stalls TCP until it is retransmitted (fast retransmit, a tail-loss probe, or
an RTO of 200 ms and more); a packet that was only queued does not. So besides
the data it logs TCP_INFO whenever the retransmission state changes, with the
acknowledged byte count, which names the message being retransmitted.

Output, one line per event (wall-clock times):
    [ts] connected LOCAL -> REMOTE
    [ts] tx seq=N                       a message handed to the socket
    [ts] rx seq=N                       its echo, verified
    [ts] tcpinfo retrans=.. total_retrans=.. ca_state=.. backoff=.. acked=.. rto_us=..
    [ts] error KIND: DETAIL             reset, end of stream, wrong data, no recovery
    summary {JSON}                      TCP_INFO and the namespace's TCP counters
On SIGINT/SIGTERM it stops sending, waits up to --drain seconds for the echo of
everything sent, prints the summary and exits 0, or 1 after an error line.

Run inside the namespace: `nsenter --net=... python3 -m harness.probes.tcp ...`.
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

MSG = 64
WATCH_S = 0.002
HEADER = struct.Struct("!4sI")
MAGIC = b"TMGT"
# struct tcp_info up to tcpi_segs_in (linux/tcp.h): 8 u8, 24 u32, 4 u64, 2 u32.
TCP_INFO = struct.Struct("=8B24I4Q2I")
CA_STATES = ("open", "disorder", "cwr", "recovery", "loss")
# The namespace's TCP counters worth a line in the record: retransmissions by cause.
COUNTERS = {"Tcp": ("RetransSegs",),
            "TcpExt": ("TCPTimeouts", "TCPLossProbes", "TCPLossProbeRecovery",
                       "TCPFastRetrans", "TCPSlowStartRetrans", "TCPSpuriousRTOs",
                       "TCPDSACKRecv", "TCPDSACKOldSent")}


def message(seq: int) -> bytes:
    """Message seq: its number, then a filler that differs per message."""
    fill = bytes((seq * 31 + i) & 0xFF for i in range(MSG - HEADER.size))
    return HEADER.pack(MAGIC, seq) + fill


def tcp_info(sock: socket.socket) -> dict[str, int]:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO.size)
    v = TCP_INFO.unpack(raw.ljust(TCP_INFO.size, b"\0"))
    return {"ca_state": v[1], "retransmits": v[2], "backoff": v[4], "rto_us": v[8],
            "unacked": v[12], "lost": v[14], "rtt_us": v[23], "total_retrans": v[31],
            "acked": v[34], "received": v[35]}


def counters(net: Path = Path("/proc/self/net")) -> dict[str, int]:
    """The COUNTERS of this network namespace, from /proc/net/snmp and netstat."""
    found: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        lines = (net / name).read_text().splitlines()
        for head, values in zip(lines[::2], lines[1::2], strict=False):
            prefix, _, keys = head.partition(":")
            wanted = COUNTERS.get(prefix, ())
            pairs = zip(keys.split(), values.partition(":")[2].split(), strict=False)
            found.update({k: int(v) for k, v in pairs if k in wanted})
    return found


class Failure(Exception):
    """The connection broke a promise: KIND and DETAIL become the error line."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")


class Stream:
    def __init__(self, target: str, port: int, interval: float) -> None:
        self.interval = interval
        self.sock = socket.create_connection((target, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.counters0 = counters()
        self.out = bytearray()  # written by us, not yet taken by the kernel
        self.inbuf = bytearray()
        self.sent = self.echoed = 0  # messages
        self.state: tuple[int, int, int] | None = None
        self.stopping = False
        local, remote = self.sock.getsockname(), self.sock.getpeername()
        self.emit(f"[{time.time():.6f}] connected {local[0]}:{local[1]} -> "
                  f"{remote[0]}:{remote[1]}")

    def emit(self, line: str) -> None:
        sys.stdout.write(line + "\n")

    def queue_message(self) -> None:
        self.out += message(self.sent)
        self.emit(f"[{time.time():.6f}] tx seq={self.sent}")
        self.sent += 1

    def flush(self) -> None:
        try:
            n = self.sock.send(self.out) if self.out else 0
        except BlockingIOError:
            return
        except OSError as exc:
            raise Failure("reset", f"send failed: {exc.strerror}") from exc
        del self.out[:n]

    def receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            raise Failure("reset", f"{exc.strerror} after {self.echoed} of {self.sent} "
                          "messages came back") from exc
        if not data:
            raise Failure("closed", f"the guest closed the connection after {self.echoed} "
                          f"of {self.sent} messages came back")
        now = time.time()
        self.inbuf += data
        while len(self.inbuf) >= MSG:
            got = bytes(self.inbuf[:MSG])
            del self.inbuf[:MSG]
            if got != message(self.echoed):
                magic, seq = HEADER.unpack_from(got)
                what = f"message {seq}" if magic == MAGIC else "bytes of no message"
                raise Failure("data", f"{what} arrived where message {self.echoed} was due")
            self.emit(f"[{now:.6f}] rx seq={self.echoed}")
            self.echoed += 1
        if self.echoed > self.sent:
            raise Failure("data", "more came back than was sent")

    def watch(self) -> None:
        """A tcpinfo line whenever the retransmission state changes."""
        info = tcp_info(self.sock)
        state = (info["total_retrans"], info["ca_state"], info["backoff"])
        if state != self.state:
            self.state = state
            fields = " ".join(f"{k}={v}" for k, v in info.items())
            self.emit(f"[{time.time():.6f}] tcpinfo {fields}")

    def step(self, deadline: float) -> None:
        # At most WATCH_S between two looks at TCP_INFO, so a retransmission is seen
        # while the message it resends is still the first unacknowledged one.
        wait = min(max(0.0, deadline - time.monotonic()), WATCH_S)
        want_write = [self.sock] if self.out else []
        try:
            readable, _, _ = select.select([self.sock], want_write, [], wait)
        except InterruptedError:
            readable = []
        if readable:
            self.receive()
        self.flush()
        self.watch()
        sys.stdout.flush()

    def warm_up(self, timeout: float) -> None:
        """One message and its echo before the paced stream: the guest's `nc -e cat`
        starts cat only once connected, and its start is not the migration's doing."""
        self.queue_message()
        end = time.monotonic() + timeout
        while self.echoed < 1:
            if time.monotonic() > end:
                raise Failure("stalled", f"no echo within {timeout:g} s of connecting")
            self.step(min(end, time.monotonic() + 0.05))

    def run(self, drain: float) -> None:
        self.warm_up(drain)
        next_send = time.monotonic()
        while not self.stopping:
            if time.monotonic() >= next_send:
                self.queue_message()
                next_send = max(next_send + self.interval, time.monotonic())
            self.step(next_send)
        end = time.monotonic() + drain
        while self.echoed < self.sent:
            if time.monotonic() > end:
                raise Failure("stalled", f"{self.sent - self.echoed} of {self.sent} messages "
                              f"still unechoed {drain:g} s after the last was sent")
            self.step(min(end, time.monotonic() + 0.05))

    def summary(self) -> str:
        now = counters()
        delta = {k: now[k] - self.counters0.get(k, 0) for k in now}
        return "summary " + json.dumps({"messages": self.sent, "echoed": self.echoed,
                                        "tcp_info": tcp_info(self.sock), "counters": delta})

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tcp_probe", description=__doc__.splitlines()[0])
    p.add_argument("-i", "--interval", type=float, default=0.001,
                   help="seconds between two messages")
    p.add_argument("--drain", type=float, default=10.0,
                   help="seconds to wait, once stopped, for the last echoes")
    p.add_argument("target")
    p.add_argument("port", type=int)
    args = p.parse_args(argv)
    if not 0.0005 <= args.interval <= 10:
        p.error("interval must be between 0.0005 and 10 seconds")
    try:
        stream = Stream(args.target, args.port, args.interval)
    except OSError as exc:
        print(f"[{time.time():.6f}] error connect: {args.target}:{args.port}: {exc.strerror}")
        return 1
    signal.signal(signal.SIGINT, stream.stop)
    signal.signal(signal.SIGTERM, stream.stop)
    status = 0
    try:
        stream.run(args.drain)
    except Failure as exc:
        stream.emit(f"[{time.time():.6f}] error {exc}")
        status = 1
    stream.emit(stream.summary())
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
