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
from harness.run.results import Analysed, HopResult, Observed, Verified
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


def _sides(hop: HopResult) -> dict[str, Any]:
    """The hop's own binaries: a chain that alternates them runs the pair both ways."""
    src, dst = hop.plan.sides
    return {"qemu": src.qemu, "qemu_version": src.caps.version,
            "interface": src.caps.interface, "target_qemu": dst.qemu,
            "target_qemu_version": dst.caps.version, "target_interface": dst.caps.interface}


def _observed(o: Observed) -> dict[str, Any]:
    r = o.resumed
    return {"downtime_ms": o.migration.downtime_ms, "stop_ts": r.stop, "resume_ts": r.resume,
            "stop_resume_ms": round(1000 * (r.resume - r.stop), 3)}


def _icmp(a: Analysed, o: Observed) -> dict[str, Any]:
    i = a.icmp.analysis
    out: dict[str, Any] = {
        "blackout_ms": i.blackout_ms, "lost": i.lost, "blackout_start": i.blackout_start,
        "blackout_end": i.blackout_end, "resolution_ms": i.resolution_ms,
        "late_replies": i.late_replies, "interval_ms": i.interval_ms,
        "lost_when": a.icmp.lost_when, "lost_in_window": a.icmp.lost_when["stop_to_resume"],
        "epsilon_ms": a.calibration.epsilon_ms, "calibration": a.calibration.to_json(),
        "downtime_breakdown": a.breakdown.to_json() if a.breakdown else None,
        "flow_breakdown": a.flow_breakdown.to_json() if a.flow_breakdown else None}
    if i.blackout_start is not None:
        out["pre_stop_ms"] = round(max(0.0, 1000 * (o.resumed.stop - i.blackout_start)), 3)
    return out


def _traffic(a: Analysed | None, v: Verified | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    queue_packets: dict[str, Any] = {}
    if a is not None:
        t = a.traffic
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
    if v is not None and (target := v.target) is not None:
        queue_packets["after"] = target.queues_after.to_json()
        out["queues_all_carried"] = not target.queues_after.silent()
        if target.all_queues is not None:
            queue_packets["all"] = target.all_queues.to_json()
    out["queue_packets"] = queue_packets
    return out


def _checks(hop: HopResult) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    if (v := hop.verified) is not None and v.same_tap is not None:
        checks.update(v.same_tap.to_json())
    if (a := hop.analysed) is not None:
        checks["handover"] = {**a.handover.to_json(), "took_ms": a.held_ms}
    if v is not None and v.target is not None and v.target.fresh.flows:
        checks["fresh_flows"] = v.target.fresh_flows()
    if hop.last_good_qemu is not None:
        checks["last_good_qemu"] = hop.last_good_qemu
    if hop.observed is not None:
        checks["ram_blocks"] = {k: list(v) for k, v in hop.observed.ram_blocks.items()}
    return checks


def assemble(ctx: Context, hop: HopResult | None, error: BaseException | None,
             duration_s: float | None, artifacts: dict[str, str] | None = None) -> RunRecord:
    """The record of one run or hop: its context, every result it got, and its outcome.
    Without a hop (refused, or the boot failed) the record says only that."""
    number = hop.plan.number if hop is not None else 1
    fields = {**_context(ctx), **_outcome(error, number),
              "started": ctx.started, "duration_s": duration_s,
              "artifacts": dict(artifacts or {}),
              "hop": number if ctx.chain is not None else None}
    if hop is not None:
        o, a = hop.observed, hop.analysed
        fields.update(_sides(hop), **(_observed(o) if o is not None else {}),
                      **(_icmp(a, o) if a is not None and o is not None else {}),
                      **_traffic(a, hop.verified), checks=_checks(hop),
                      started=hop.plan.started, step_s=dict(hop.step_s),
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
