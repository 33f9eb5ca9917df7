"""The host end of a TCP connection kept busy across a migration.

It connects to the guest's echo (busybox `nc -ll -p PORT -e cat`), sends one
64-byte, sequence-numbered message every --interval, and checks every echoed
byte: each message exactly once and in order. A packet the migration drops
stalls TCP until it is retransmitted (fast retransmit, a tail-loss probe, or
an RTO of 200 ms and more); a packet that was only queued does not. So besides
the data it logs TCP_INFO whenever the retransmission state changes, with the
acknowledged byte count, which names the message being retransmitted.

Output, one line per event (wall-clock times):
    [ts] connect retry N: REASON        the network refused connect N; retried
    [ts] connected LOCAL -> REMOTE
    [ts] tx seq=N                       a message handed to the socket
    [ts] rx seq=N                       its echo, verified
    [ts] tcpinfo retrans=.. total_retrans=.. ca_state=.. backoff=.. acked=.. rto_us=..
    [ts] error KIND: DETAIL             reset, end of stream, wrong data, no recovery
    summary {JSON}                      TCP_INFO and the namespace's TCP counters
On SIGINT/SIGTERM it stops sending, waits up to --drain seconds for the echo of
everything sent, prints the summary and exits 0, or 1 after an error line.
A connect the network refuses is retried for --connect-retry seconds: on a
new-TAP hop the host's address may still be moving between TAPs when it starts.

Run inside the namespace: `nsenter --net=... python3 -m harness.probes.tcp ...`.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.probes.base import Program, Schedule, emit, emit_at, emit_now, readable

MSG = 64
WATCH_S = 0.002
# What connect meets while the host's address moves between TAPs (or before the
# guest's nc listens): worth another try, for CONNECT_RETRY_S, every RETRY_PAUSE_S.
RETRY_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED,
                          errno.EADDRNOTAVAIL})
CONNECT_RETRY_S = 5.0
RETRY_PAUSE_S = 0.05
HEADER = struct.Struct("!4sI")
MAGIC = b"TMGT"
# struct tcp_info up to tcpi_segs_in (linux/tcp.h): 8 u8, 24 u32, 4 u64, 2 u32.
TCP_INFO = struct.Struct("=8B24I4Q2I")
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


class Stream(Program):
    """The connection, from connect to summary. SIGINT and SIGTERM count from the
    first connect attempt, so a stop while retrying ends the retries."""

    def __init__(self, target: str, port: int, interval: float,
                 retry_s: float = CONNECT_RETRY_S) -> None:
        self.interval = interval
        self.retries = 0
        self.stop_on_signals()
        self.sock = self.connect(target, port, retry_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.counters0 = counters()
        self.out = bytearray()  # written by us, not yet taken by the kernel
        self.inbuf = bytearray()
        self.sent = self.echoed = 0  # messages
        self.state: tuple[int, int, int] | None = None
        local, remote = self.sock.getsockname(), self.sock.getpeername()
        emit_now(f"connected {local[0]}:{local[1]} -> {remote[0]}:{remote[1]}")

    def connect(self, target: str, port: int, retry_s: float) -> socket.socket:
        """A connected socket; a refusal in RETRY_ERRNOS is retried, with a line each
        time, until retry_s have passed or a stop came. Then its error is raised."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return socket.create_connection((target, port), timeout=10)
            except OSError as exc:
                if (exc.errno not in RETRY_ERRNOS or self.stopping
                        or time.monotonic() + RETRY_PAUSE_S > deadline):
                    raise
                self.retries += 1
                emit_now(f"connect retry {self.retries}: {exc.strerror}")
                sys.stdout.flush()
                time.sleep(RETRY_PAUSE_S)

    def queue_message(self) -> None:
        self.out += message(self.sent)
        emit_now(f"tx seq={self.sent}")
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
            emit_at(now, f"rx seq={self.echoed}")
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
            emit_now(f"tcpinfo {fields}")

    def step(self, timeout: float) -> None:
        # At most WATCH_S between two looks at TCP_INFO, so a retransmission is seen
        # while the message it resends is still the first unacknowledged one.
        wait = min(max(0.0, timeout), WATCH_S)
        if readable([self.sock], wait, [self.sock] if self.out else []):
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
            self.step(end - time.monotonic())

    def run(self, drain: float) -> None:
        self.warm_up(drain)
        # A message late for its slot goes at once, then the schedule resumes.
        self.paced(Schedule(self.interval, catch_up=True), self.queue_message, self.step)
        end = time.monotonic() + drain
        while self.echoed < self.sent:
            if time.monotonic() > end:
                raise Failure("stalled", f"{self.sent - self.echoed} of {self.sent} messages "
                              f"still unechoed {drain:g} s after the last was sent")
            self.step(end - time.monotonic())

    def summary(self) -> str:
        now = counters()
        delta = {k: now[k] - self.counters0.get(k, 0) for k in now}
        return "summary " + json.dumps({"messages": self.sent, "echoed": self.echoed,
                                        "connect_retries": self.retries,
                                        "tcp_info": tcp_info(self.sock), "counters": delta})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tcp_probe", description=__doc__.splitlines()[0])
    p.add_argument("-i", "--interval", type=float, default=0.001,
                   help="seconds between two messages")
    p.add_argument("--drain", type=float, default=10.0,
                   help="seconds to wait, once stopped, for the last echoes")
    p.add_argument("--connect-retry", type=float, default=CONNECT_RETRY_S,
                   help="seconds to retry a connect the network refuses")
    p.add_argument("target")
    p.add_argument("port", type=int)
    args = p.parse_args(argv)
    if not 0.0005 <= args.interval <= 10:
        p.error("interval must be between 0.0005 and 10 seconds")
    if not 0 <= args.connect_retry <= 60:
        p.error("--connect-retry must be between 0 and 60 seconds")
    try:
        stream = Stream(args.target, args.port, args.interval, args.connect_retry)
    except OSError as exc:
        emit_now(f"error connect: {args.target}:{args.port}: {exc.strerror}")
        return 1
    status = 0
    try:
        stream.run(args.drain)
    except Failure as exc:
        emit_now(f"error {exc}")
        status = 1
    emit(stream.summary())
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
