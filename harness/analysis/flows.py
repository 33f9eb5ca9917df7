"""The multi-flow probe's log, read back: per flow, its blackout, losses and queue.

Each flow's blackout is found as the ICMP one is (harness.analysis.ping): the longest hole
between its replies that overlaps [STOP, RESUME]. A flow did not recover when,
after RESUME, it never answered again, or answered much less than the flows
beside it did (under half their upper-quartile share). The second test is
relative on purpose: a busy TCG host slows every flow alike, while a queue whose
packets go astray silences only the flows steered to it. Either fails the run,
naming the flow and its queue.
"""

from __future__ import annotations

import itertools
import re
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from harness.analysis.ping import LATE_FACTOR, LATE_MIN_MS, TS_PREFIX
from harness.analysis.queues import QueueCounts
from harness.errors import CheckFailed

SENT = re.compile(TS_PREFIX + r"sent flow=(?P<flow>\d+) seq=(?P<seq>\d+)$")
REPLY = re.compile(TS_PREFIX + r"reply flow=(?P<flow>\d+) seq=(?P<seq>\d+) cpu=(?P<cpu>\d+) "
                   r"time=(?P<rtt>[\d.]+) ms")
HEADER = re.compile(r"^FLOWS (?P<flows>\d+) to \S+ ports (?P<port>\d+)-")
GUEST_PORT = 7000  # tapmig-guest's first echo port: flow i uses GUEST_PORT + i
# Once all flows are back, each must answer at least this share of what most flows do.
RECOVERED_SHARE = 0.5

Key = tuple[int, int]  # (flow, seq)


@dataclass
class FlowLog:
    flows: int = 0
    port: int = 0  # the guest port of flow 0
    sent: dict[Key, float] = field(default_factory=dict)
    replies: dict[Key, tuple[float, int]] = field(default_factory=dict)  # first: (ts, cpu)
    rtt_ms: dict[Key, float] = field(default_factory=dict)


def parse(text: str) -> FlowLog:
    log = FlowLog()
    for line in text.splitlines():
        if m := SENT.match(line):
            log.sent[int(m["flow"]), int(m["seq"])] = float(m["ts"])
        elif m := REPLY.match(line):
            key = int(m["flow"]), int(m["seq"])
            if key not in log.replies:
                log.replies[key] = float(m["ts"]), int(m["cpu"])
                log.rtt_ms[key] = float(m["rtt"])
        elif m := HEADER.match(line):
            log.flows, log.port = int(m["flows"]), int(m["port"])
    return log


@dataclass(frozen=True)
class FlowResult:
    """One flow across the migration. Times are wall-clock seconds, like STOP's."""

    flow: int
    port: int  # the guest's UDP port
    cpu: int | None  # the guest CPU that answered it last
    queue: int | None  # that CPU's queue pair, by the guest's XPS map
    sent: int
    answered: int
    lost: int
    late: int  # answered after more than max(LATE_MIN_MS, LATE_FACTOR x its median RTT)
    blackout_ms: float | None
    blackout_start: float | None
    blackout_end: float | None
    back_ms: float | None  # its first reply after RESUME, in ms from STOP; None: none came
    answered_after: float | None  # share answered of the requests sent once all were back
    lost_when: dict[str, Any]  # when its lost requests were sent: see when_lost()
    recovered: bool = True  # set by analyze(), which compares the flows

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def when_lost(sent: list[float], window: tuple[float, float]) -> dict[str, Any]:
    """When the requests that got no reply were sent, relative to [STOP, RESUME]: how
    many before STOP, between, and after RESUME, and the first and last in ms from
    STOP. Counts, not a list, so a record stays small over a thousand-hop soak; the
    probe's log (and the timeline) has each one."""
    stop, resume = window
    ms = sorted(1000 * (t - stop) for t in sent)
    return {"before_stop": sum(1 for t in sent if t < stop),
            "stop_to_resume": sum(1 for t in sent if stop <= t <= resume),
            "after_resume": sum(1 for t in sent if t > resume),
            "first_ms": round(ms[0], 3) if ms else None,
            "last_ms": round(ms[-1], 3) if ms else None}


def late_after_ms(rtts: list[float]) -> float:
    """The RTT above which a reply counts as late: the request was queued, as in ping."""
    return max(LATE_MIN_MS, LATE_FACTOR * statistics.median(rtts)) if rtts else LATE_MIN_MS


def _hole(times: list[float], window: tuple[float, float]) -> tuple[float, float] | None:
    """The longest gap between consecutive replies that overlaps the window."""
    gaps = [(a, b) for a, b in itertools.pairwise(times) if a <= window[1] and b >= window[0]]
    return max(gaps, key=lambda g: g[1] - g[0], default=None)


def analyze_flow(log: FlowLog, flow: int, window: tuple[float, float], settled: float,
                 queues: QueueCounts | None) -> FlowResult:
    """window: [STOP, RESUME]; settled: from when every flow should answer."""
    sent = {seq: ts for (f, seq), ts in log.sent.items() if f == flow}
    replies = {seq: r for (f, seq), r in log.replies.items() if f == flow and seq in sent}
    rtts = [log.rtt_ms[flow, seq] for seq in replies]
    late = sum(1 for r in rtts if r > late_after_ms(rtts))
    hole = _hole(sorted(ts for ts, _ in replies.values()), window)
    after = [seq for seq, ts in sent.items() if ts >= settled]
    cpu = replies[max(replies)][1] if replies else None
    stop = window[0]
    back = min((ts for ts, _ in replies.values() if ts > window[1]), default=None)
    return FlowResult(
        flow=flow, port=log.port + flow, cpu=cpu,
        queue=queues.queue_of_cpu(cpu) if queues is not None and cpu is not None else None,
        sent=len(sent), answered=len(replies), lost=len(sent) - len(replies), late=late,
        blackout_ms=round(1000 * (hole[1] - hole[0]), 3) if hole else None,
        blackout_start=hole[0] if hole else None, blackout_end=hole[1] if hole else None,
        back_ms=round(1000 * (back - stop), 3) if back is not None else None,
        answered_after=(round(sum(1 for s in after if s in replies) / len(after), 3)
                        if after else None),
        lost_when=when_lost([ts for seq, ts in sent.items() if seq not in replies], window))


@dataclass(frozen=True)
class FlowsSummary:
    """The figures of all flows: the worst blackout, and how far the flows differ."""

    flows: list[FlowResult]
    worst_ms: float | None
    best_ms: float | None
    lost: int
    late: int

    @property
    def spread_ms(self) -> float | None:
        if self.worst_ms is None or self.best_ms is None:
            return None
        return round(self.worst_ms - self.best_ms, 3)

    @property
    def lost_in_window(self) -> int:
        """Requests of every flow sent between STOP and RESUME and never answered."""
        return sum(int(f.lost_when.get("stop_to_resume", 0)) for f in self.flows)


def typical_share(results: list[FlowResult]) -> float:
    """What a healthy flow answers once all are back: the upper quartile of the shares,
    so that half the flows gone astray cannot drag the bar down with them."""
    shares = [r.answered_after for r in results if r.answered_after is not None]
    if len(shares) < 2:
        return shares[0] if shares else 0.0
    return statistics.quantiles(shares, n=4, method="inclusive")[2]


def judge(results: list[FlowResult]) -> list[FlowResult]:
    """Mark the flows that did not recover: silent after RESUME, or far below the rest."""
    bar = RECOVERED_SHARE * typical_share(results)
    return [replace(r, recovered=r.back_ms is not None and (
        r.answered_after is None or r.answered_after >= bar)) for r in results]


def analyze(log: FlowLog, window: tuple[float, float], settled: float,
            queues: QueueCounts | None = None) -> FlowsSummary:
    results = judge([analyze_flow(log, f, window, settled, queues) for f in range(log.flows)])
    holes = [r.blackout_ms for r in results if r.blackout_ms is not None]
    return FlowsSummary(
        flows=results, worst_ms=max(holes, default=None), best_ms=min(holes, default=None),
        lost=sum(r.lost for r in results), late=sum(r.late for r in results))


def describe(r: FlowResult, vcpus: int, name: str = "flow") -> str:
    """A flow as a person looks for it: ports, and the queue (pair) it was steered to."""
    if r.queue is not None:
        where = f"queue {r.queue} (guest CPU {r.cpu})"
    else:  # never answered: tapmig-guest serves port GUEST_PORT + i on CPU i % vcpus
        where = f"guest CPU {(r.port - GUEST_PORT) % vcpus}'s queue"
    return f"{name} {r.flow} (UDP port {r.port}, {where})"


def check_recovered(summary: FlowsSummary, vcpus: int, what: str = "after RESUME",
                    name: str = "flow") -> None:
    """Every flow answers again once the target runs; else CheckFailed naming them."""
    bad = [r for r in summary.flows if not r.recovered]
    if not bad:
        return
    first = bad[0]
    if first.back_ms is None:
        why = f"no reply {what}"
    else:
        why = (f"answered {first.answered_after or 0:.0%} of its requests once the flows were "
               f"back, where most flows answered {typical_share(summary.flows):.0%}")
    others = f"; also {', '.join(f'flow {r.flow}' for r in bad[1:])}" if bad[1:] else ""
    raise CheckFailed(f"{describe(first, vcpus, name)} did not recover: {why} "
                      f"({first.lost} of {first.sent} lost){others}", check="flows")
