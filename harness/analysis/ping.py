"""ICMP prober logs (`ping -D -O` lines): parse them, find the blackout.

The outage is measured as the longest hole between consecutive replies, not
from "no answer yet" lines: while a link is down the kernel may queue echo
requests and answer them late, so a real outage can show 0% loss and no
"no answer" line at all. The probe interval actually achieved (not the one
asked for) is the resolution of every figure, and is reported with it.
"""

from __future__ import annotations

import itertools
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError

# A reply is late when its RTT exceeds both of these: the kernel queued the request.
LATE_MIN_MS = 5.0
LATE_FACTOR = 10.0

TS_PREFIX = r"^\[(?P<ts>\d+\.\d+)\] "  # every prober line starts with its time, as `ping -D`
REPLY = re.compile(TS_PREFIX
                   + r"\d+ bytes from .*?icmp_seq=(?P<seq>\d+) .*?time=(?P<rtt>[\d.]+) ms")
NO_ANSWER = re.compile(TS_PREFIX + r"no answer yet for icmp_seq=(?P<seq>\d+)")
SENT = re.compile(TS_PREFIX + r"sent icmp_seq=(?P<seq>\d+)$")
ERROR = re.compile(TS_PREFIX + r"From .*?icmp_seq=(?P<seq>\d+) (?P<what>.*)")
SUMMARY = re.compile(r"^(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (packets )?received")


@dataclass(frozen=True)
class PingLine:
    """One line of ping output that concerns one echo request."""

    ts: float
    seq: int
    rtt_ms: float | None  # None: no answer yet, or an error
    duplicate: bool = False
    error: bool = False  # an ICMP error or a failed send, not a "no answer yet" line
    send_failed: bool = False  # the prober could not send it: sampled "down" at ts


@dataclass(frozen=True)
class PingLog:
    lines: list[PingLine]
    transmitted: int | None  # from the summary line, when ping was stopped cleanly
    sent: dict[int, float] = field(default_factory=dict)  # from tapmig's prober only


def unwrap(raw: int, last: int | None) -> int:
    """The 16-bit sequence number as the unwrapped value nearest the latest one, so a
    late reply from before a wrap stays before it instead of jumping ahead."""
    if last is None:
        return raw
    return last + ((raw - last + 32768) % 65536) - 32768


def parse(text: str) -> PingLog:
    """Parse a `ping -D -O` log; sequence numbers are unwrapped past 65535."""
    lines: list[PingLine] = []
    sent: dict[int, float] = {}
    transmitted = None
    last: int | None = None  # the latest unwrapped sequence number
    for line in text.splitlines():
        if s := SENT.match(line):
            seq = unwrap(int(s.group("seq")), last)
            last = max(seq, last if last is not None else seq)
            sent[seq] = float(s.group("ts"))
            continue
        m = REPLY.match(line) or NO_ANSWER.match(line) or ERROR.match(line)
        if m is None:
            if s := SUMMARY.match(line):
                transmitted = int(s.group("tx"))
            continue
        seq = unwrap(int(m.group("seq")), last)
        last = max(seq, last if last is not None else seq)
        rtt = m.groupdict().get("rtt")
        lines.append(PingLine(float(m.group("ts")), seq,
                            float(rtt) if rtt is not None else None, "(DUP!)" in line,
                            m.re is ERROR, "send failed" in line))
    return PingLog(lines, transmitted, sent)


@dataclass(frozen=True)
class Analysis:
    replies: int
    transmitted: int
    lost: int
    blackout_ms: float | None
    blackout_start: float | None  # the last reply before the hole
    blackout_end: float | None  # the first reply after it
    resolution_ms: float | None  # the probe spacing at the hole's edges
    interval_ms: float | None  # the achieved probe interval over the whole log
    late_replies: int
    late_max_rtt_ms: float | None
    median_rtt_ms: float | None
    no_answer_lines: int
    first_unanswered: float | None
    last_unanswered: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def send_times(log: PingLog) -> dict[int, float]:
    """When each request left, where the log tells: a reply's timestamp minus its RTT,
    or a "no answer yet for N" line, which ping prints just before it sends N+1."""
    sends: dict[int, float] = dict(log.sent)
    for p in log.lines:
        if p.rtt_ms is not None:
            sends.setdefault(p.seq, p.ts - p.rtt_ms / 1000)
        elif p.send_failed:
            sends.setdefault(p.seq, p.ts)
        elif not p.error:
            sends.setdefault(p.seq + 1, p.ts)
    return sends


def longest_hole(replies: list[PingLine],
                 window: tuple[float, float] | None) -> tuple[float, float] | None:
    """(last reply before, first reply after) the longest hole that overlaps `window`."""
    best: tuple[float, float] | None = None
    for a, b in itertools.pairwise(replies):
        if window and not (a.ts <= window[1] and b.ts >= window[0]):
            continue
        if best is None or b.ts - a.ts > best[1] - best[0]:
            best = (a.ts, b.ts)
    return best


def achieved_interval_ms(sends: dict[int, float]) -> float | None:
    if len(sends) < 2:
        return None
    first, last = min(sends), max(sends)
    return 1000 * (sends[last] - sends[first]) / (last - first)


def edge_resolution_ms(hole: tuple[float, float], replies: list[PingLine],
                       sends: dict[int, float]) -> float:
    """The edges are only as sharp as the requests around them: the outage began
    between the last answered request and the next one sent, and ended no earlier
    than the request before the first answered one after the hole."""
    times = sorted(sends.values())
    lo = sends.get(next(p for p in replies if p.ts == hole[0]).seq, hole[0])
    hi = sends.get(next(p for p in replies if p.ts == hole[1]).seq, hole[1])
    gap_start = min((t - lo for t in times if t > lo), default=hole[1] - lo)
    gap_end = min((hi - t for t in times if t < hi), default=hi - lo)
    return 1000 * max(gap_start, gap_end)


def analyze(log: PingLog, window: tuple[float, float] | None = None) -> Analysis:
    """Find the blackout: the longest hole between replies (overlapping `window` if given).

    With a window (STOP and RESUME), a stray slow reply elsewhere in the log
    cannot be mistaken for the migration's outage.
    """
    replies = [p for p in log.lines if p.rtt_ms is not None and not p.duplicate]
    unanswered = [p for p in log.lines if p.rtt_ms is None and not p.error]
    seqs = [p.seq for p in log.lines]
    transmitted = log.transmitted if log.transmitted is not None else (
        max(seqs) - min(seqs) + 1 if seqs else 0)
    hole = longest_hole(replies, window)
    sends = send_times(log)
    interval = achieved_interval_ms(sends)
    resolution = edge_resolution_ms(hole, replies, sends) if hole else None
    rtts = [p.rtt_ms for p in replies if p.rtt_ms is not None]
    median_rtt = statistics.median(rtts) if rtts else None
    late = [r for r in rtts if median_rtt is not None
            and r > max(LATE_MIN_MS, LATE_FACTOR * median_rtt)]
    return Analysis(
        replies=len(replies),
        transmitted=transmitted,
        lost=max(transmitted - len({p.seq for p in replies}), 0),
        blackout_ms=round(1000 * (hole[1] - hole[0]), 3) if hole else None,
        blackout_start=hole[0] if hole else None,
        blackout_end=hole[1] if hole else None,
        resolution_ms=round(resolution, 3) if resolution is not None else None,
        interval_ms=round(interval, 3) if interval is not None else None,
        late_replies=len(late),
        late_max_rtt_ms=max(late) if late else None,
        median_rtt_ms=median_rtt,
        no_answer_lines=len(unanswered),
        first_unanswered=unanswered[0].ts if unanswered else None,
        last_unanswered=unanswered[-1].ts if unanswered else None,
    )


def analyze_file(path: Path, window: tuple[float, float] | None = None) -> Analysis:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise UsageError(f"cannot read ping log {path}: {exc.strerror}") from exc
    log = parse(text)
    if not log.lines:
        raise UsageError(f"{path}: no `ping -D -O` lines found; pass a log written by "
                          "`ping -D -O` (e.g. ping.log from a tapmig run)")
    return analyze(log, window)
