"""The host's probes across one hop, besides what the guest runs: the ICMP prober, K UDP
flows and a TCP connection, started together before the migration and stopped together
after the tail, each writing its log into the run dir (harness.analysis parses them).

One ICMP flow hashes to one TAP queue, and with one vCPU the guest uses one queue pair
anyway, so a series that mis-attached the other queues' fds would pass. So, alongside
the ICMP prober:
- K UDP flows on distinct ports, which the TAP spreads over its queues; each must
  recover, and each has its own blackout (harness.analysis.flows);
- a TCP connection with sequence-numbered data both ways, which must carry every byte
  once and in order (harness.analysis.tcp_stream).
The guest's end of them is harness.run.guest_traffic.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.analysis import flows, ping
from harness.analysis.queues import QueueCounts
from harness.errors import CheckFailed
from harness.probes import driver
from harness.run.config import GUEST_IP
from harness.run.results import HopLogs, HopPlan

if TYPE_CHECKING:
    from harness.run.lab import Lab

UDP_PORT = flows.GUEST_PORT  # flow i on UDP_PORT + i, fresh flow i on UDP_PORT + K + i
SPORT = 47000  # the host's source port of flow i: SPORT + i
# How long a flow prober waits for late replies once told to stop. The hop's probes
# stop after the tail, which already waited tail_s past the last flow's recovery, and
# a TCG guest answers within tens of ms once running: 0.1 s keeps the last requests
# from counting as lost without adding 0.3 s per probe to every hop.
DRAIN_S = 0.1


class FlowProbe(driver.ProbeProcess):
    name = "flow probe"

    def __init__(self, log: Path, prefix: list[str], count: int, interval: float,
                 first: int = 0, sport: int = SPORT, requests: int | None = None) -> None:
        argv = [*prefix, sys.executable, "-m", "harness.probes.flow", "-k", str(count),
                "-i", f"{interval:g}", "--port", str(UDP_PORT + first), "--sport", str(sport),
                "--drain", f"{DRAIN_S:g}"]
        if requests is not None:
            argv += ["--count", str(requests)]
        super().__init__([*argv, GUEST_IP], log)


class LogTail:
    """The replies a probe has logged since the last look, while it still writes."""

    def __init__(self, path: Path, reply: re.Pattern[str],
                 who: Callable[[re.Match[str]], int]) -> None:
        self.path, self.reply, self.who = path, reply, who
        self.pos, self.partial = 0, ""

    def replies(self) -> Iterator[tuple[int, float]]:
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        *lines, self.partial = (self.partial + data.decode(errors="replace")).split("\n")
        for line in lines:
            if m := self.reply.match(line):
                yield self.who(m), float(m["ts"])


def log_path(lab: Lab, plan: HopPlan, stem: str) -> Path:
    """Where the hop's probe `stem` (ping, flows, tcp) writes its log."""
    return lab.rundir / f"{stem}{plan.suffix}.log"


@dataclass(frozen=True)
class HopProbes:
    """Every probe of one hop, running; flows and tcp are None where Config asks for none."""

    lab: Lab
    plan: HopPlan
    pinger: driver.Pinger
    flows: FlowProbe | None
    tcp: driver.TcpStream | None

    def wait_answering(self, timeout: float = 10.0) -> float:
        """Until the ICMP prober has its first reply, and when it came (wall clock, as
        the probes timestamp it): the settle time, whose noise sets the window's slack,
        counts from there, not from the prober's start-up (a Python interpreter, slow on
        a busy host: 0.2 s of a 0.25 s settle time was seen spent on it, leaving too few
        replies to judge)."""
        tail = LogTail(log_path(self.lab, self.plan, "ping"), ping.REPLY, lambda m: -1)
        deadline = time.monotonic() + timeout
        while (first := next(tail.replies(), None)) is None:
            if time.monotonic() > deadline:
                raise CheckFailed(f"the guest answered no ICMP request within {timeout:g} s "
                                  "of the probes' start, before any migration",
                                  check="icmp-before")
            time.sleep(0.005)
        return first[1]

    def wait_recovered(self, resume: float) -> float | None:
        """Wait until ICMP and every flow answered after RESUME; when the last one
        did, or None if one had not within recover_timeout. A slow target (TCG on a
        busy host) then gets its whole tail to show whether each flow is healthy."""
        tails = [LogTail(log_path(self.lab, self.plan, "ping"), ping.REPLY, lambda m: -1)]
        if self.flows is not None:
            tails.append(LogTail(log_path(self.lab, self.plan, "flows"), flows.REPLY,
                                 lambda m: int(m["flow"])))
        waiting = {-1, *range(self.lab.cfg.flows if self.flows is not None else 0)}
        last = resume
        deadline = time.monotonic() + self.lab.cfg.recover_timeout
        while waiting:
            for tail in tails:
                for who, ts in tail.replies():
                    if ts > resume and who in waiting:
                        waiting.discard(who)
                        last = max(last, ts)
            if waiting and time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        return last

    def stop(self, recovered: float | None, source_queues: QueueCounts | None) -> HopLogs:
        """Every probe's log. A prober that died on its own fails the run; the TCP one
        ends itself on a broken connection, which its log tells."""
        for probe in (self.pinger, self.flows, self.tcp):
            if probe is not None:
                probe.interrupt()  # every probe drains at once, not one after the other
        text = self.pinger.stop()
        flow_text = self.flows.stop() if self.flows is not None else None
        tcp_text = self.tcp.finish()[0] if self.tcp is not None else None
        return HopLogs(text, flow_text, tcp_text, source_queues, recovered)


@contextmanager
def probing(lab: Lab, plan: HopPlan) -> Iterator[HopProbes]:
    """The hop's probes, started together; killed together on the way out, whatever
    happened."""
    cfg, prefix = lab.cfg, lab.ns.exec_prefix()
    with ExitStack() as stack:
        pinger = stack.enter_context(driver.Pinger(
            GUEST_IP, log_path(lab, plan, "ping"), prefix, cfg.ping_interval, cfg.prober))
        flow = (stack.enter_context(FlowProbe(log_path(lab, plan, "flows"), prefix,
                                              cfg.flows, cfg.flow_interval))
                if cfg.flows else None)
        tcp = (stack.enter_context(driver.TcpStream(GUEST_IP, log_path(lab, plan, "tcp"),
                                                    prefix, cfg.tcp))
               if cfg.tcp != "off" else None)
        yield HopProbes(lab, plan, pinger, flow, tcp)
