"""The traffic of a run besides ICMP: K UDP flows, a TCP connection, per-queue counts.

One ICMP flow hashes to one TAP queue, and with one vCPU the guest uses one
queue pair anyway, so a series that mis-attached the other queues' fds would
pass. So, across each migration hop, alongside the ICMP prober:
- K UDP flows on distinct ports, which the TAP spreads over its queues; each
  must recover, and each has its own blackout (harness.analysis.flows);
- a TCP connection with sequence-numbered data both ways, which must carry
  every byte once and in order (harness.analysis.tcp_stream);
- the guest's per-queue counters on the source before, and on the target after,
  where fresh flows (new to the TAP's flow table) must each be answered and every
  live queue pair must carry packets both ways (harness.analysis.queues).
The guest end is tapmig-guest (UDP echo, queue counters) and busybox nc.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from harness.analysis import flows, ping, queues, tcp_stream
from harness.errors import CheckFailed, InternalError, ProbeFailed, QEMUError, Unsupported
from harness.guest.spec import HELPER
from harness.probes import driver
from harness.qemu.vm import VM
from harness.run.config import EPSILON_MS, GUEST_IP, HOST_IP, Config
from harness.run.results import HopLogs, Resumed, Target, Traffic

if TYPE_CHECKING:
    from harness.run.lab import Lab

UDP_PORT = flows.GUEST_PORT  # flow i on UDP_PORT + i, fresh flow i on UDP_PORT + K + i
SPORT = 47000  # the host's source port of flow i: SPORT + i
FRESH_SPORT, FRESH_PORTS = 48000, 16000  # the fresh flows' source ports: 48000-63999
FRESH_COUNT = 20  # requests per fresh flow on the target
FRESH_INTERVAL = 0.005  # 8 flows x 200 requests/s: a tenth of a second per check
# How long a flow prober waits for late replies once told to stop. The hop's probes
# stop after the tail, which already waited tail_s past the last flow's recovery, and
# a TCG guest answers within tens of ms once running: 0.1 s keeps the last requests
# from counting as lost without adding 0.3 s per probe to every hop.
DRAIN_S = 0.1
# The guest pings the host (proving it can originate traffic on the target) in the
# same console line as the queue reading, which saves a console round trip per hop.
PING_HOST = "ping -c 1 -W 3 {host} >/dev/null && "
PING_FAILED = '|| echo TAPMIG-GUEST-PING-"FAILED"'
# Up to the line's end: the console may deliver "TAPMIG-LACKS-tapmig" before "-guest".
LACKS = r"TAPMIG-LACKS-([\w-]+)\r?\n|TAPMIG-HAS-ALL"


def resolve_vcpus(value: int | str, queues: int) -> int:
    """--vcpus N, or "queues": one vCPU per queue pair, so that every queue is live."""
    return queues if value == "queues" else int(value)


def epsilon_ms(lab: Lab) -> float:
    return lab.cfg.epsilon_ms if lab.cfg.epsilon_ms is not None else EPSILON_MS[lab.accel]


def needed_tools(cfg: Config) -> list[str]:
    return ([HELPER] if cfg.flows or cfg.all_queues else []) + (["nc"] if cfg.tcp != "off"
                                                                 else [])


def start_servers(lab: Lab, vm: VM) -> queues.QueueCounts | None:
    """Once per guest: its UDP echo and TCP echo; the queue reading before any probe.
    A guest without the tools a check needs is refused in one line, never skipped."""
    cfg = lab.cfg
    tools = needed_tools(cfg)
    if not tools:
        return None
    probe = " ".join(tools)
    # A path must be executable; busybox's own applets come back as bare names.
    m = vm.run_console(f'for t in {probe}; do p=$(command -v $t) && case $p in /*) [ -x "$p" ]'
                       f';; esac || echo TAPMIG-LACKS-"$t"; done; echo TAPMIG-HAS-"ALL"', LACKS)
    if m.group(1):
        option = "--flows 0 --no-all-queues" if m.group(1) == HELPER else "--tcp off"
        raise Unsupported(f"guest {lab.guest.name} has no {m.group(1)}, which the traffic "
                          f"checks need: use the embedded guest, or {option}")
    if cfg.tcp != "off":
        # At real-time priority where tapmig-guest is there: see harness/guest/helper.c.
        fifo = f"{HELPER} fifo " if HELPER in tools else ""
        vm.type(f"{fifo}nc -ll -p {driver.TCP_PORT} -e cat &\n")
    if not cfg.flows:
        vm.run_console('echo TAPMIG-TCP-"UP"', "TAPMIG-TCP-UP")
        return None
    # One line, one round trip of the (slow, under TCG) console: the echo, then the
    # counters before any probe.
    return read_queues(vm, before=f"{HELPER} echo {UDP_PORT} {2 * cfg.flows} && ")


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


class HopProbes:
    """Every probe of one hop, started together, stopped together, killed on any error."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.suffix = "" if lab.hop == 0 else f"-{lab.hop + 1}"
        self.stack = ExitStack()
        self.source_queues: queues.QueueCounts | None = None
        self.pinger: driver.Pinger | None = None
        self.flows: FlowProbe | None = None
        self.tcp: driver.TcpStream | None = None

    def path(self, stem: str, ext: str = "log") -> Path:
        return self.lab.rundir / f"{stem}{self.suffix}.{ext}"

    def __enter__(self) -> Self:
        cfg, prefix = self.lab.cfg, self.lab.ns.exec_prefix()
        with ExitStack() as stack:
            self.pinger = stack.enter_context(driver.Pinger(
                GUEST_IP, self.path("ping"), prefix, cfg.ping_interval, cfg.prober))
            if cfg.flows:
                self.flows = stack.enter_context(FlowProbe(
                    self.path("flows"), prefix, cfg.flows, cfg.flow_interval))
            if cfg.tcp != "off":
                self.tcp = stack.enter_context(driver.TcpStream(
                    GUEST_IP, self.path("tcp"), prefix, cfg.tcp))
            self.stack = stack.pop_all()
        return self

    def wait_answering(self, timeout: float = 10.0) -> float:
        """Until the ICMP prober has its first reply, and when it came (wall clock, as
        the probes timestamp it): the settle time, whose noise sets
        the window's slack, counts from there, not from the prober's start-up (a Python
        interpreter, slow on a busy host: 0.2 s of a 0.25 s settle time was seen spent
        on it, leaving too few replies to judge)."""
        tail = LogTail(self.path("ping"), ping.REPLY, lambda m: -1)
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
        tails = [LogTail(self.path("ping"), ping.REPLY, lambda m: -1)]
        if self.flows is not None:
            tails.append(LogTail(self.path("flows"), flows.REPLY, lambda m: int(m["flow"])))
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

    def read_source(self, vm: VM) -> None:
        """The source's counters after the settle time: which queues it used since the
        last reading (the servers' start, or the previous hop's check)."""
        if self.lab.queue_baseline is not None:
            self.source_queues = read_queues(vm).since(self.lab.queue_baseline)

    def stop(self, recovered: float | None) -> HopLogs:
        """Every probe's log. A prober that died on its own fails the run; the TCP one
        ends itself on a broken connection, which its log tells."""
        if self.pinger is None:
            raise InternalError("the hop's probes were stopped before they started")
        for probe in (self.pinger, self.flows, self.tcp):
            if probe is not None:
                probe.interrupt()  # every probe drains at once, not one after the other
        text = self.pinger.stop()
        flow_text = self.flows.stop() if self.flows is not None else None
        tcp_text = self.tcp.finish()[0] if self.tcp is not None else None
        return HopLogs(text, flow_text, tcp_text, self.source_queues, recovered, self.suffix)

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stack.close()


def analyze(lab: Lab, logs: HopLogs, resumed: Resumed, eps_ms: float) -> Traffic:
    """The hop's flows and TCP connection, judged on what they were sent once every
    flow answered again (the tail after that is tail_s long); if one never did, from
    RESUME + the hop's epsilon."""
    stop, resume = resumed.window
    settled = logs.recovered or resume + eps_ms / 1000
    summary = tcp = None
    if logs.flows is not None:
        summary = flows.analyze(flows.parse(logs.flows), (stop, resume), settled,
                                logs.source_queues)
    if logs.tcp is not None:
        tcp = tcp_stream.analyze(tcp_stream.parse(logs.tcp), (stop, settled))
    return Traffic(logs.source_queues, summary, tcp)


def judge(result: Traffic, cfg: Config) -> None:
    """A flow that did not recover, or a broken TCP connection, fails the hop."""
    if result.flows is not None:
        flows.check_recovered(result.flows, cfg.vcpus)
    if result.tcp is not None:
        tcp_stream.check(result.tcp, cfg.tcp)


def verify_target(lab: Lab) -> Target | None:
    """On the target: the guest pings the host, then fresh flows, which the TAP has
    never seen, each sent FRESH_COUNT requests, and the guest's queue counters before
    and after them. Without flows, the guest's ping alone."""
    vm = lab.source
    if vm is None:
        raise InternalError("the target checks ran without a serving QEMU")
    if not lab.cfg.flows:
        lab.guest_pings_host(vm)
        if lab.cfg.all_queues:  # without flows, the queues are enabled but carry no test
            enable_all_queues(lab)
            lab.guest_pings_host(vm)
        return None
    before = read_queues(vm, before=PING_HOST.format(host=HOST_IP), after=PING_FAILED)
    text = fresh_flows(lab)
    after = read_queues(vm)
    lab.queue_baseline = after  # the next hop of a chain counts from here
    fresh = flows.analyze(flows.parse(text), (0.0, 0.0), 0.0, after)
    return Target(after.since(before), fresh,
                  [{"flow": r.flow, "port": r.port, "queue": r.queue, "sent": r.sent,
                    "answered": r.answered} for r in fresh.flows],
                  enable_all_queues(lab) if lab.cfg.all_queues else None)


def judge_target(target: Target | None, cfg: Config) -> None:
    """Every fresh flow answered, every live queue pair carried packets both ways; with
    all_queues, every queue pair of the device too."""
    if target is None:
        return
    flows.check_recovered(target.fresh, cfg.vcpus, what="from the target", name="fresh flow")
    if target.queues_after is not None:
        queues.check_every_queue(target.queues_after, "on the target")
    if target.all_queues is not None:
        queues.check_every_queue(target.all_queues, "on the target once the guest enabled "
                                 "them all")


SWEEP_ROUNDS = 4  # of K fresh flows each: 4K flows spread over the queues by their hash


def enable_all_queues(lab: Lab) -> queues.QueueCounts:
    """The guest enables every queue pair its device offers, then (with flows) fresh
    flows run in SWEEP_ROUNDS rounds of new source ports, so that the TAP's flow hash
    puts some on every queue; the packets each queue pair carried meanwhile. A QEMU
    that cannot serve a queue it had no use for (no backend for it) dies or leaves the
    queue silent: either fails the hop, naming the queues. The guest then goes back to
    the queue pairs it used, so that every hop of a chain enables them anew."""
    vm = lab.source
    if vm is None:
        raise InternalError("the queue sweep ran without a serving QEMU")
    used = read_queues(vm).live if lab.queue_baseline is None else lab.queue_baseline.live
    try:
        before = read_queues(vm, pairs="all")
    except QEMUError as exc:
        cause = " <- ".join(vm.stderr_lines()[-4:])
        raise CheckFailed(f"the target QEMU failed when the guest enabled all {lab.cfg.queues} "
                          f"queue pairs: {cause or exc}", check="all-queues") from exc
    if before.live != before.max:
        raise CheckFailed(f"the guest could enable only {before.live} of {before.max} queue "
                          "pairs on the target", check="all-queues")
    for r in range(SWEEP_ROUNDS if lab.cfg.flows else 0):
        fresh_flows(lab, round_=r + 1)
    after = read_queues(vm)
    lab.queue_baseline = read_queues(vm, pairs=used)  # the next hop counts from here
    return after.since(before)


def fresh_flows(lab: Lab, round_: int = 0) -> str:
    """K flows from source ports the TAP has not seen (new ones each hop of a chain, and
    each round of a hop), FRESH_COUNT requests each; the prober's log."""
    sport = FRESH_SPORT + ((lab.hop * (1 + SWEEP_ROUNDS) + round_) * lab.cfg.flows) % FRESH_PORTS
    timeout = 30 + FRESH_COUNT * FRESH_INTERVAL
    log = lab.rundir / ("fresh-flows.log" if round_ == 0 else f"all-queues-{round_}.log")
    with FlowProbe(log, lab.ns.exec_prefix(), lab.cfg.flows,
                   FRESH_INTERVAL, first=lab.cfg.flows, sport=sport,
                   requests=FRESH_COUNT) as probe:
        if probe.proc is None:
            raise InternalError("the fresh-flow probe was entered but has no process")
        try:
            probe.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ProbeFailed("the fresh-flow probe", None, "", timeout_s=timeout) from None
        text, status = probe.finish()
    if status != 0:
        raise ProbeFailed("the fresh-flow probe", status, driver.last_line(text))
    return text


def read_queues(vm: VM, iface: str = "eth0", timeout: float = 20.0, before: str = "",
                after: str = "", pairs: int | str = "") -> queues.QueueCounts:
    """The guest's counters now, typed into its console shell (after `before`, a
    command prefix that must succeed first; `after` says if it did not); with pairs
    (a count, or "all" the device offers), once that many queue pairs are enabled."""
    m = vm.run_console(f"{before}{HELPER} queues {iface} {pairs} {after}", queues.WHOLE_LINE,
                       failure=f"{queues.FAILED}|TAPMIG-GUEST-PING-FAILED", timeout=timeout)
    return queues.QueueCounts.parse(m.group(0))
