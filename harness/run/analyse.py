"""The hop's figures from its observations: each probe log parsed once, then the ICMP
outage, the window's calibration, the flows and TCP connection, where the blackout went
(both QEMUs' traces) and the handover evidence. Asks no QEMU and changes nothing: the
same Observed gives the same Analysed.
"""

from __future__ import annotations

from harness.analysis import flows, handover, noise, ping, tcp_stream
from harness.analysis.downtime import Breakdown, HopMarks, breakdown, load_trace
from harness.run.config import EPSILON_MS, Config
from harness.run.results import (
    Analysed,
    HeldFiles,
    HopPlan,
    Icmp,
    Observed,
    Parsed,
    Resumed,
    Traffic,
)
from harness.vocabulary import Accel, Mode


def hop(plan: HopPlan, observed: Observed, cfg: Config, accel: Accel) -> Analysed:
    """Every figure of one hop."""
    logs, resumed = observed.logs, observed.resumed
    parsed = Parsed(ping.parse(logs.ping),
                    flows.parse(logs.flows) if logs.flows is not None else None,
                    tcp_stream.parse(logs.tcp) if logs.tcp is not None else None)
    icmp = icmp_result(parsed.ping, resumed)
    # The window's epsilon from the host's noise in the settle time (up to `migrate`),
    # with the accelerator's figure (or --epsilon-ms) as the floor.
    floor = cfg.epsilon_ms if cfg.epsilon_ms is not None else EPSILON_MS[accel]
    calibration = noise.calibrate(
        noise.measure(parsed.ping, observed.migration.sent, parsed.flows), floor)
    traffic = traffic_of(parsed, observed, calibration.epsilon_ms)
    icmp_bd, flow_bd = where_it_went(plan, observed, icmp, traffic, cfg.trace)
    return Analysed(parsed, icmp, calibration, traffic, icmp_bd, flow_bd,
                    handover_of(resumed.held, cfg.mode, cfg.queues), resumed.held.took_ms)


def icmp_result(icmp: ping.PingLog, resumed: Resumed) -> Icmp:
    """The ICMP outage around [STOP, RESUME], and when the unanswered requests were sent."""
    sent = ping.send_times(icmp)
    answered = {p.seq for p in icmp.lines if p.rtt_ms is not None}
    lost = [t for s, t in sent.items() if s not in answered and s <= max(answered, default=0)]
    return Icmp(ping.analyze(icmp, window=resumed.window), flows.when_lost(lost, resumed.window))


def traffic_of(parsed: Parsed, observed: Observed, eps_ms: float) -> Traffic:
    """The hop's flows and TCP connection, judged on what they were sent once every
    flow answered again (the tail after that is tail_s long); if one never did, from
    RESUME + the hop's epsilon."""
    logs = observed.logs
    stop, resume = observed.resumed.window
    settled = logs.recovered or resume + eps_ms / 1000
    summary = (flows.analyze(parsed.flows, (stop, resume), settled, logs.source_queues)
               if parsed.flows is not None else None)
    tcp = (tcp_stream.analyze(parsed.tcp, (stop, settled)) if parsed.tcp is not None
           else None)
    return Traffic(logs.source_queues, summary, tcp)


def handover_of(held: HeldFiles, mode: Mode, queues: int) -> handover.Handover:
    """The per-queue evidence, from what both QEMUs held."""
    return handover.match(mode, queues, held.source, held.target, held.source_tap,
                          held.target_tap, lambda s, d: (s, d) in held.same)


def where_it_went(plan: HopPlan, observed: Observed, icmp: Icmp, traffic: Traffic,
                  traced: bool) -> tuple[Breakdown | None, Breakdown | None]:
    """The ICMP hole, and the worst flow's, split into QEMU's checkpoints and the
    harness's own steps, from both QEMUs' traces (read once the source has quit)."""
    m, s, r = observed.migration, observed.switch, observed.resumed
    marks = HopMarks(r.stop, r.cont_sent, r.resume, m.src_completed, m.dst_completed,
                     s.start if s else None, s.end if s else None)
    untraced = None if traced else "tracing was off for this run (Config.trace)"
    src, dst = plan.sides
    # Each side was traced with its own binary's events, and is read as such.
    src_log = load_trace(plan.traces[0]) if traced and src.caps.trace else None
    dst_log = load_trace(plan.traces[1]) if traced and dst.caps.trace else None
    versions = dict.fromkeys((src.caps.version, dst.caps.version))
    qemu = f"QEMU {' -> '.join(versions)}"

    def split(hole: tuple[float | None, float | None]) -> Breakdown | None:
        if hole[0] is None or hole[1] is None:
            return None
        return breakdown((hole[0], hole[1]), marks, src_log, dst_log, qemu, untraced=untraced)

    a = icmp.analysis
    worst = None
    if traffic.flows is not None:
        holes = [f for f in traffic.flows.flows if f.blackout_ms is not None]
        worst = max(holes, key=lambda f: f.blackout_ms or 0.0, default=None)
    flow = split((worst.blackout_start, worst.blackout_end)) if worst else None
    return split((a.blackout_start, a.blackout_end)), flow
