"""The one place a RunRecord is made: from the run's context and its hop's typed results.

No phase writes into a record. A run, a chain's hop, a failure or a Ctrl-C all end
here, so every record has the same shape and every figure one origin.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from typing import Any

from harness.errors import EXIT_INTERRUPTED, Inconclusive, TapmigError, Unsupported
from harness.record import RunRecord
from harness.run.config import Config
from harness.run.results import Hop
from harness.run.setup import Setup


@dataclass(frozen=True)
class Context:
    """What a record says of where and how its run ran, beyond the hop itself."""

    cfg: Config
    setup: Setup | None  # None: the run was refused before it was settled
    started: str  # ISO-8601, UTC: when the run (or chain) began
    boot_s: float | None = None
    chain: str | None = None
    shard: str | None = None
    iteration: int | None = None
    cpu_model: str = ""


def _outcome(error: BaseException | None, hop: int) -> dict[str, Any]:
    """status, error and failure: the error's class and its plain attributes, so that
    tests and tools never parse the message."""
    if error is None:
        return {"status": "ok", "exit_code": 0}
    if isinstance(error, TapmigError):
        attrs = {k: v for k, v in vars(error).items() if isinstance(v, (str, int, float))}
        status = ("unsupported" if isinstance(error, Unsupported) else
                  "inconclusive" if isinstance(error, Inconclusive) else "failed")
        return {"status": status, "error": str(error), "exit_code": error.exit_code,
                "failure": {"kind": type(error).__name__, **attrs}}
    return {"status": "failed", "failure": {"kind": "Interrupted"},
            "exit_code": EXIT_INTERRUPTED,
            "error": f"interrupted (SIGINT or SIGTERM) during hop {hop}"}


def _context(ctx: Context) -> dict[str, Any]:
    cfg, s = ctx.cfg, ctx.setup
    out: dict[str, Any] = {
        "mode": cfg.mode, "qemu": cfg.qemu, "qemu_version": "", "accel": "tcg", "guest": "",
        "vhost": cfg.vhost, "queues": cfg.queues, "prober": cfg.prober, "vcpus": cfg.vcpus,
        "flows": cfg.flows, "tcp": cfg.tcp, "all_queues": cfg.all_queues,
        "host_kernel": platform.release(),
        "boot_s": ctx.boot_s, "chain": ctx.chain, "shard": ctx.shard,
        "iteration": ctx.iteration, "cpu_model": ctx.cpu_model}
    if s is not None:
        out.update(qemu=s.caps.qemu, qemu_version=s.caps.version, interface=s.caps.interface,
                   target_qemu=s.target_caps.qemu, target_qemu_version=s.target_caps.version,
                   target_interface=s.target_caps.interface, machine=s.machine.type,
                   guest_cpu=s.machine.cpu, guest=s.guest.name, accel=s.accel,
                   accel_reason=s.accel_reason)
    return out


def _sides(hop: Hop) -> dict[str, Any]:
    """The hop's own binaries: a chain that alternates them runs the pair both ways."""
    if hop.sides is None:
        return {}
    src, dst = hop.sides
    return {"qemu": src.qemu, "qemu_version": src.caps.version,
            "interface": src.caps.interface, "target_qemu": dst.qemu,
            "target_qemu_version": dst.caps.version, "target_interface": dst.caps.interface}


def _icmp(hop: Hop) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if hop.migration is not None:
        out["downtime_ms"] = hop.migration.downtime_ms
    if (r := hop.resumed) is not None:
        out.update(stop_ts=r.stop, resume_ts=r.resume,
                   stop_resume_ms=round(1000 * (r.resume - r.stop), 3))
    if hop.icmp is not None:
        a = hop.icmp.analysis
        out.update(blackout_ms=a.blackout_ms, lost=a.lost, blackout_start=a.blackout_start,
                   blackout_end=a.blackout_end, resolution_ms=a.resolution_ms,
                   late_replies=a.late_replies, interval_ms=a.interval_ms,
                   lost_when=hop.icmp.lost_when,
                   lost_in_window=hop.icmp.lost_when["stop_to_resume"])
        if a.blackout_start is not None and r is not None:
            out["pre_stop_ms"] = round(max(0.0, 1000 * (r.stop - a.blackout_start)), 3)
    return out


def _traffic(hop: Hop) -> dict[str, Any]:
    out: dict[str, Any] = {}
    queue_packets: dict[str, Any] = {}
    if (t := hop.traffic) is not None:
        if t.source_queues is not None:
            out["queues_live"] = t.source_queues.live
            queue_packets["before"] = t.source_queues.to_json()
        if (f := t.flows) is not None:
            out.update(flow_blackout_ms=f.worst_ms, flow_blackout_min_ms=f.best_ms,
                       flow_spread_ms=f.spread_ms, flow_lost=f.lost, flow_late=f.late,
                       flow_lost_in_window=f.lost_in_window,
                       flow_detail=[r.to_json() for r in f.flows])
        if (c := t.tcp) is not None:
            out.update(tcp_stall_ms=c.stall_ms, tcp_retrans=c.retrans, tcp_rto=c.rto,
                       tcp_detail=c.to_json())
    if hop.target is not None and (carried := hop.target.queues_after) is not None:
        queue_packets["after"] = carried.to_json()
        out["queues_all_carried"] = not carried.silent()
    if hop.target is not None and (every := hop.target.all_queues) is not None:
        queue_packets["all"] = every.to_json()
    out["queue_packets"] = queue_packets
    return out


def _checks(hop: Hop) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    if hop.same_tap is not None:
        checks.update(hop.same_tap)
    if hop.handover is not None and hop.resumed is not None:
        checks["handover"] = {**hop.handover.to_json(),
                              "took_ms": hop.resumed.held.took_ms}
    if hop.target is not None and hop.target.fresh_flows:
        checks["fresh_flows"] = hop.target.fresh_flows
    if hop.last_good_qemu is not None:
        checks["last_good_qemu"] = hop.last_good_qemu
    if hop.ram_blocks:
        checks["ram_blocks"] = {k: list(v) for k, v in hop.ram_blocks.items()}
    return checks


def assemble(ctx: Context, hop: Hop | None, error: BaseException | None,
             duration_s: float | None, artifacts: dict[str, str] | None = None) -> RunRecord:
    """The record of one run or hop: its context, every result it got, and its outcome."""
    fields = {**_context(ctx), **_outcome(error, hop.number if hop else 1),
              "started": ctx.started, "duration_s": duration_s,
              "artifacts": dict(artifacts or {})}
    if hop is not None:
        fields.update(_sides(hop), **_icmp(hop), **_traffic(hop), checks=_checks(hop),
                      hop=hop.number
                      if ctx.chain is not None else None, started=hop.started,
                      epsilon_ms=hop.epsilon_ms, phases=dict(hop.timings),
                      calibration=hop.calibration.to_json() if hop.calibration else None,
                      downtime_breakdown=hop.breakdown.to_json() if hop.breakdown else None,
                      flow_breakdown=(hop.flow_breakdown.to_json() if hop.flow_breakdown
                                      else None),
                      footprint=hop.footprint.to_json() if hop.footprint else None)
    return RunRecord(**fields)


def with_artifacts(rec: RunRecord, artifacts: dict[str, str]) -> RunRecord:
    """The record naming the files kept beside it, which are written from the record."""
    return replace(rec, artifacts=dict(artifacts))


def placed(rec: RunRecord, iteration: int, shard: str | None, cpu: str,
           prefix: str) -> RunRecord:
    """The record as a campaign keeps it: its iteration and shard, the host's CPU model,
    and its files named relative to the campaign's directory."""
    return replace(rec, iteration=iteration, shard=shard, cpu_model=cpu,
                   artifacts={k: f"{prefix}{v}" for k, v in rec.artifacts.items()})
