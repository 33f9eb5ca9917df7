"""Speed and memory figures, printed against their targets and never asserted.

Timing depends on the machine, so a timed test would be either flaky or
toothless; `tapmig bench` reports the figures for people (and notes) instead.
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.analysis import trend
from harness.campaign import loop
from harness.campaign.plan import Plan, resolve_builds
from harness.campaign.preflight import preflight
from harness.campaign.store import prepare_out
from harness.guest.embedded import build_embedded
from harness.qemu.capabilities import query_capabilities
from harness.qemu.vm import VM
from harness.record import RunRecord
from harness.report.render import render_markdown
from harness.run import footprint
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Moment
from harness.run.scenario import run
from harness.vocabulary import AccelChoice, Log, Mode

# What the issues ask for under TCG on a 2-core machine.
TARGETS = {"boot_s": 8.0, "duration_s": 30.0, "resolution_ms": 1.0}


def vm_rss_kib(vm: VM) -> int:
    """Peak resident set of one QEMU (VmHWM), from /proc."""
    return 0 if vm.pid is None else footprint.rss_kib(vm.pid, "VmHWM")


@dataclass
class Sampler:
    """A scenario hook that records QEMU memory at the held switchover point."""

    rss_kib: list[int] = field(default_factory=list)

    def __call__(self, phase: Moment, lab: Lab, result: object) -> None:
        if phase == "switchover":
            self.rss_kib.extend(vm_rss_kib(vm) for vm in (lab.source, lab.target) if vm)


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def bench(qemu: str, modes: list[Mode], iterations: int, accel: AccelChoice, cache: Path,
          log: Log) -> list[str]:
    """Run each mode `iterations` times and return the report lines."""
    t0 = time.monotonic()
    guest = build_embedded(cache, log)
    lines = [f"embedded guest ready (cached or built) in {time.monotonic() - t0:.2f} s"]
    caps = query_capabilities(qemu)
    lines.append(f"QEMU {caps.version} ({caps.qemu})")
    sampler = Sampler()
    records: dict[Mode, list[RunRecord]] = {}
    log_kib: dict[Mode, list[float]] = {}
    for i in range(iterations):
        for mode in modes:
            with tempfile.TemporaryDirectory(prefix=f"tapmig-{os.getpid()}-bench-") as out:
                rec = run(Config(qemu=qemu, mode=mode, accel=accel, cache=cache, guest=guest,
                                 out=Path(out)), log=lambda _msg: None)
                if (ping_log := Path(out) / "ping.log").exists():
                    log_kib.setdefault(mode, []).append(ping_log.stat().st_size / 1024)
            log(f"[{i + 1}/{iterations}] {mode}: {rec.status} blackout {rec.blackout_ms} ms, "
                f"boot {rec.boot_s} s, run {rec.duration_s} s")
            records.setdefault(mode, []).append(rec)
    # One extra run with the switchover held, only to sample memory: it is not timed.
    run(Config(qemu=qemu, mode=modes[0], accel=accel, cache=cache, guest=guest,
               pause_before_switchover=True), log=lambda _msg: None, observers=[sampler])
    for mode, recs in records.items():
        ok = [r for r in recs if r.status == "ok"]
        lines.append(f"{mode}: {len(ok)}/{len(recs)} ok, accelerator "
                     f"{recs[0].accel}" + (f" ({recs[0].error})" if not ok else ""))
        for key, unit in (("boot_s", "s"), ("duration_s", "s"), ("blackout_ms", "ms"),
                          ("downtime_ms", "ms"), ("stop_resume_ms", "ms"),
                          ("pre_stop_ms", "ms"), ("interval_ms", "ms"),
                          ("resolution_ms", "ms"), ("lost", "")):
            values: list[float | None] = [getattr(r, key) for r in ok]
            med = median(values)
            target = TARGETS.get(key)
            verdict = "" if target is None or med is None else (
                f"  (target <= {target:g}: {'met' if med <= target else 'MISSED'})")
            shown = [v for v in values if v is not None]
            spread = f" [{min(shown):g} .. {max(shown):g}]" if shown else ""
            lines.append(f"  {key:<15} median {med} {unit}{spread}{verdict}")
        if sizes := log_kib.get(mode):
            lines.append(f"  ping log        median {statistics.median(sizes):.0f} KiB per run")
    if sampler.rss_kib:
        lines.append(f"QEMU peak RSS at switchover: {max(sampler.rss_kib) / 1024:.0f} MiB "
                     f"(source and target; guest RAM is the shared /dev/shm file)")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lines.append(f"tapmig peak RSS: {own / 1024:.0f} MiB")
    lines.append(f"bench wall time: {time.monotonic() - t0:.0f} s")
    return lines


# -- chains: time per hop, and what grows over many hops ------------------------------

HOP_S = 1.5  # per hop, under TCG on this 2-core machine
PER_100_S = 180.0  # wall time of 100 hops


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def _wall_s(recs: list[RunRecord]) -> float:
    """From the first hop's start to the last hop's end (the boot is not a hop)."""
    first = datetime.fromisoformat(recs[0].started)
    last = datetime.fromisoformat(recs[-1].started)
    return (last - first).total_seconds() + (recs[-1].duration_s or 0.0)


def _phase_line(recs: list[RunRecord]) -> str:
    names = list(dict.fromkeys(k for r in recs for k in r.step_s))
    parts = [f"{k} {statistics.median(r.step_s[k] for r in recs if k in r.step_s):.3f}"
             for k in names]
    rest = [(r.duration_s or 0.0) - sum(r.step_s.values()) for r in recs]
    return ", ".join([*parts, f"retire+record {statistics.median(rest):.3f}"])


def _finding(c: dict[str, Any], metric: str) -> dict[str, Any] | None:
    return next((f for f in c["findings"] if f["metric"] == metric), None)


def chain_lines(c: dict[str, Any], recs: list[RunRecord]) -> list[str]:
    """One chain against the hop targets, with where a hop's time goes."""
    ok = sorted((r for r in recs if r.status == "ok"), key=lambda r: r.hop or 0)
    lines = [f"{c['mode']}: {c['ok']}/{c['hops']} hops ok ({c['end']}); boot {c['boot_s']} s"]
    if not ok:
        return lines
    hop_s = sorted(r.duration_s or 0.0 for r in ok)
    wall = _wall_s(ok)
    per_100 = wall * 100 / len(ok)
    lines += [f"  time per hop    median {statistics.median(hop_s):.2f} s, p95 "
              f"{hop_s[max(0, round(0.95 * len(hop_s)) - 1)]:.2f} s, max {hop_s[-1]:.2f} s "
              f"(target <= {HOP_S:g}: {_met(statistics.median(hop_s) <= HOP_S)})",
              f"  wall time       {wall:.0f} s for {len(ok)} hops = {per_100:.0f} s per 100 "
              f"(target <= {PER_100_S:g}: {_met(per_100 <= PER_100_S)})",
              f"  per phase (median s): {_phase_line(ok)}"]
    if (rss := _finding(c, "tapmig_rss_kib")) is not None:
        first, last = (c[k]["tapmig_rss_kib"] / 1024 for k in ("first", "last"))
        ci = "" if rss["ci"] is None else f" [{rss['ci'][0]:+.1f}, {rss['ci'][1]:+.1f}]"
        lines.append(f"  tapmig RSS      {first:.1f} -> {last:.1f} MiB, {rss['per_hop']:+.1f} "
                     f"KiB/hop{ci}; {rss['note']} (target flat: {_met(not rss['flagged'])})")
    grown = [f for m in trend.COUNTERS if (f := _finding(c, m)) is not None]
    lines.append("  no growth       " + ", ".join(
        f"{f['metric']} {f['first']:g} -> {f['last']:g}" for f in grown)
        + f" (target: {_met(not any(f['flagged'] or f['last'] > f['first'] for f in grown))})")
    return lines


def bench_chain(qemu: str, modes: list[Mode], hops: int, accel: AccelChoice, cache: Path,
                log: Log, out: Path | None = None,
                **options: Any) -> list[str]:
    """One chain of `hops` per mode, through `tapmig measure --chain`, and its figures;
    `options` takes measure's other settings (epsilon_ms, flows, tcp, vcpus)."""
    with tempfile.TemporaryDirectory(prefix=f"tapmig-{os.getpid()}-bench-") as tmp:
        where = out or Path(tmp)
        prepare_out(where)
        builds = resolve_builds([qemu])
        # As measure's: every queue pair must carry traffic after the hop.
        run = Config(qemu=qemu, accel=accel, cache=cache, all_queues=True, **options)
        campaign = Plan(builds=builds, modes=tuple(modes), iterations=1, out=where, run=run,
                        hops=hops)
        outcome = loop.run_campaign(campaign, preflight(campaign, log), log)
    lines = [f"QEMU {', '.join(sorted({r.qemu_version for r in outcome.records}))} ({qemu})"]
    for c in outcome.report.chains:
        lines += chain_lines(c, [r for r in outcome.records if r.chain == c["chain"]])
    lines += [line for line in render_markdown(outcome.report).splitlines() if line]
    return lines
