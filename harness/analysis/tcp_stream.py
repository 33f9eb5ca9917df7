"""The live TCP connection across a migration, read back from its prober's log.

The figures answer what a TCP user loses, which ICMP cannot show: the longest
time the stream made no progress (tcp_stall_ms), the retransmissions it needed
and whether an RTO fired, and which messages the migration lost, named by the
time they were sent relative to STOP and RESUME.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.analysis.ping import TS_PREFIX
from harness.errors import CheckFailed
from harness.probes.tcp import MSG
from harness.vocabulary import TcpPattern

CONNECTED = re.compile(TS_PREFIX + r"connected (?P<local>\S+) -> (?P<remote>\S+)")
EVENT = re.compile(TS_PREFIX + r"(?P<dir>tx|rx) seq=(?P<seq>\d+)$")
INFO = re.compile(TS_PREFIX + r"tcpinfo (?P<fields>.*)$")
ERROR = re.compile(TS_PREFIX + r"error (?P<kind>\w+): (?P<detail>.*)$")
SUMMARY = re.compile(r"^summary (?P<json>\{.*\})$")
RETRY = re.compile(TS_PREFIX + r"connect retry (?P<n>\d+): (?P<why>.*)$")


@dataclass
class TcpLog:
    connection: str = ""
    connected: float | None = None
    tx: dict[int, float] = field(default_factory=dict)  # message -> when it was written
    rx: dict[int, float] = field(default_factory=dict)  # message -> when its echo came
    infos: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    error: tuple[float, str, str] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    # connect attempts refused while the host side moved between TAPs, and why
    retries: list[tuple[float, str]] = field(default_factory=list)
    last: str = ""  # the log's last line: a crashed prober's last words


def parse(text: str) -> TcpLog:
    log = TcpLog()
    for line in text.splitlines():
        if m := EVENT.match(line):
            (log.tx if m["dir"] == "tx" else log.rx)[int(m["seq"])] = float(m["ts"])
        elif m := INFO.match(line):
            pairs = (kv.split("=", 1) for kv in m["fields"].split())
            log.infos.append((float(m["ts"]), {k: int(v) for k, v in pairs}))
        elif m := CONNECTED.match(line):
            log.connection, log.connected = f"{m['local']} -> {m['remote']}", float(m["ts"])
        elif m := ERROR.match(line):
            log.error = float(m["ts"]), m["kind"], m["detail"]
        elif m := SUMMARY.match(line):
            log.summary = json.loads(m["json"])
        elif m := RETRY.match(line):
            log.retries.append((float(m["ts"]), m["why"]))
        if line.strip():
            log.last = line.strip()
    return log


@dataclass(frozen=True)
class TcpResult:
    """The connection across one migration; times in ms from STOP unless absolute."""

    connection: str
    messages: int
    echoed: int
    stall_ms: float | None  # the longest wait for progress that overlaps the migration
    stall_from_ms: float | None
    stall_to_ms: float | None
    # Messages sent but not yet echoed at STOP: a guest that cannot keep up with the
    # pattern (TCG on a busy host) shows it here, and then the stall is mostly backlog.
    backlog_at_stop: int
    retrans: int | None  # TCP_INFO total_retrans of the host's end
    rto: bool | None  # did a retransmission timeout fire (TcpExt TCPTimeouts)
    counters: dict[str, int]  # the namespace's TCP counters over the run
    # Each retransmission: the message it resent, when that message was first
    # written and when the retransmission happened.
    retransmitted: list[dict[str, float]]
    error: str | None
    # connect retried while the host's address moved (a new-TAP hop); the last reason
    connect_retries: int = 0
    connect_retry_why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def stall(log: TcpLog, window: tuple[float, float]) -> tuple[float, float, float] | None:
    """(ms, from, to): each echo ends a wait that began at the later of the previous
    echo and the message's own send; the longest such wait that overlaps the window
    (so that a stray slow echo elsewhere is not taken for the migration's)."""
    best: tuple[float, float, float] | None = None
    prev = float("-inf")
    for seq in sorted(log.rx):
        begin = max(prev, log.tx.get(seq, log.rx[seq]))
        wait = log.rx[seq] - begin
        overlaps = begin <= window[1] and log.rx[seq] >= window[0]
        if overlaps and (best is None or wait > best[0]):
            best = (wait, begin, log.rx[seq])
        prev = log.rx[seq]
    return (round(1000 * best[0], 3), best[1], best[2]) if best else None


def retransmissions(log: TcpLog, stop: float) -> list[dict[str, float]]:
    """One entry per rise of total_retrans: the first unacknowledged message then
    (tcpi_bytes_acked counts the SYN too) is the one resent."""
    out: list[dict[str, float]] = []
    last = 0
    for ts, info in log.infos:
        if info.get("total_retrans", 0) > last:
            seq = max(info.get("acked", 1) - 1, 0) // MSG
            sent = log.tx.get(seq)
            out.append({"message": seq, "ca_state": info.get("ca_state", 0),
                        "sent_ms": round(1000 * (sent - stop), 3) if sent else float("nan"),
                        "at_ms": round(1000 * (ts - stop), 3)})
            last = info["total_retrans"]
    return out


def analyze(log: TcpLog, window: tuple[float, float]) -> TcpResult:
    """window: [STOP, RESUME + epsilon], where the migration's stall must lie."""
    stop = window[0]
    found = stall(log, window)
    info = log.summary.get("tcp_info", {})
    counters = log.summary.get("counters", {})
    error = None
    if log.error is not None:
        ts, kind, detail = log.error
        error = f"{kind}: {detail} (at STOP{1000 * (ts - stop):+.0f} ms)"
    elif not log.summary:
        error = f"the TCP probe ended without a summary (its last line: {log.last or 'none'})"

    def rel(t: float | None) -> float | None:
        return round(1000 * (t - stop), 3) if t is not None else None

    return TcpResult(
        connection=log.connection, messages=len(log.tx), echoed=len(log.rx),
        stall_ms=found[0] if found else None, stall_from_ms=rel(found[1] if found else None),
        stall_to_ms=rel(found[2] if found else None),
        backlog_at_stop=(sum(1 for t in log.tx.values() if t <= stop)
                         - sum(1 for t in log.rx.values() if t <= stop)),
        retrans=info.get("total_retrans"),
        rto=counters["TCPTimeouts"] > 0 if "TCPTimeouts" in counters else None,
        counters=counters, retransmitted=retransmissions(log, stop), error=error,
        connect_retries=len(log.retries),
        connect_retry_why=log.retries[-1][1] if log.retries else None)


def check(result: TcpResult, pattern: TcpPattern) -> None:
    """No reset, no end of stream, every byte once and in order, and caught up."""
    if result.error is not None:
        conn = f"TCP connection {result.connection}" if result.connection else "TCP connection"
        raise CheckFailed(f"{conn} ({pattern}) failed: {result.error}", check="tcp")
