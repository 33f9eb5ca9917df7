"""The guest's end of the traffic: its echo servers, its per-queue counters, and the
checks run on the target once it serves.

The guest runs tapmig-guest (UDP echo, queue counters, channels) and busybox nc, typed
into its console. On the target, fresh flows (new to the TAP's flow table) must each
be answered and every live queue pair must carry packets both ways
(harness.analysis.queues); with Config.all_queues the guest then enables every queue
pair the device offers, and each must carry packets too.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING

from harness.analysis import flows, queues
from harness.errors import CheckFailed, ProbeFailed, QEMUError, Unsupported
from harness.guest.spec import HELPER
from harness.probes import driver
from harness.qemu.vm import VM
from harness.run.config import HOST_IP, Config
from harness.run.hop_probes import UDP_PORT, FlowProbe
from harness.run.results import HopPlan, Target

if TYPE_CHECKING:
    from harness.run.lab import Lab

FRESH_SPORT, FRESH_PORTS = 48000, 16000  # the fresh flows' source ports: 48000-63999
FRESH_COUNT = 20  # requests per fresh flow on the target
FRESH_INTERVAL = 0.005  # 8 flows x 200 requests/s: a tenth of a second per check
FRESH_LOG = "fresh-flows.log"  # the fresh flows' log in the run dir
SWEEP_ROUNDS = 4  # of K fresh flows each: 4K flows spread over the queues by their hash
# The guest pings the host (proving it can originate traffic on the target) in the
# same console line as the queue reading, which saves a console round trip per hop.
PING_HOST = "ping -c 1 -W 3 {host} >/dev/null && "
PING_FAILED = '|| echo TAPMIG-GUEST-PING-"FAILED"'
# Up to the line's end: the console may deliver "TAPMIG-LACKS-tapmig" before "-guest".
LACKS = r"TAPMIG-LACKS-([\w-]+)\r?\n|TAPMIG-HAS-ALL"


def needed_tools(cfg: Config) -> list[str]:
    return ([HELPER] if cfg.flows or cfg.all_queues else []) + (["nc"] if cfg.tcp != "off"
                                                                 else [])


def start_servers(lab: Lab, vm: VM, cfg: Config) -> queues.QueueCounts | None:
    """Once per guest, for the traffic `cfg` asks for: its UDP echo and TCP echo; the
    queue reading before any probe. A guest without the tools a check needs is refused
    in one line, never skipped."""
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


def on_target(lab: Lab, vm: VM, plan: HopPlan,
              baseline: queues.QueueCounts | None) -> tuple[Target | None,
                                                            queues.QueueCounts | None]:
    """On the target: the guest pings the host, then fresh flows, which the TAP has
    never seen, each sent FRESH_COUNT requests, and the guest's queue counters before
    and after them. Without flows, the guest's ping alone. Also the reading the next
    hop of the guest counts from."""
    cfg = lab.cfg
    if not cfg.flows:
        lab.guest_pings_host(vm)
        if cfg.all_queues:  # without flows, the queues are enabled but carry no test
            all_queues(lab, vm, plan, baseline)
            lab.guest_pings_host(vm)
        return None, None
    before = read_queues(vm, before=PING_HOST.format(host=HOST_IP), after=PING_FAILED)
    text = fresh_flows(lab, plan)
    after = read_queues(vm)
    fresh = flows.analyze(flows.parse(text), (0.0, 0.0), 0.0, after)
    if not cfg.all_queues:
        return Target(after.since(before), fresh, None), after
    every, next_baseline = all_queues(lab, vm, plan, after)
    return Target(after.since(before), fresh, every), next_baseline


def all_queues(lab: Lab, vm: VM, plan: HopPlan, baseline: queues.QueueCounts | None
               ) -> tuple[queues.QueueCounts, queues.QueueCounts]:
    """The guest enables every queue pair its device offers, then (with flows) fresh
    flows run in SWEEP_ROUNDS rounds of new source ports, so that the TAP's flow hash
    puts some on every queue; the packets each queue pair carried meanwhile, and the
    reading once the guest went back to the queue pairs it used (so that every hop of a
    chain enables them anew). A QEMU that cannot serve a queue it had no use for (no
    backend for it) dies or leaves the queue silent: either fails the hop, naming the
    queues."""
    used = (baseline or read_queues(vm)).live
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
        fresh_flows(lab, plan, round_=r + 1)
    after = read_queues(vm)
    return after.since(before), read_queues(vm, pairs=used)


def fresh_flows(lab: Lab, plan: HopPlan, round_: int = 0) -> str:
    """K flows from source ports the TAP has not seen (new ones each hop of a chain, and
    each round of a hop), FRESH_COUNT requests each; the prober's log."""
    k = lab.cfg.flows
    sport = FRESH_SPORT + ((plan.number * (1 + SWEEP_ROUNDS) + round_) * k) % FRESH_PORTS
    timeout = 30 + FRESH_COUNT * FRESH_INTERVAL
    log = lab.rundir / (FRESH_LOG if round_ == 0 else f"all-queues-{round_}.log")
    with FlowProbe(log, lab.ns.exec_prefix(), k, FRESH_INTERVAL, first=k, sport=sport,
                   requests=FRESH_COUNT) as probe:
        try:
            probe.wait(timeout=timeout)
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
