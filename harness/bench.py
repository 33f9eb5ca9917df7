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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.guest import build_embedded
from harness.probe import probe
from harness.record import RunRecord
from harness.scenario import Config, Migration, run
from harness.vm import VM

# What the issues ask for under TCG on a 2-core machine.
TARGETS = {"boot_s": 8.0, "duration_s": 30.0, "resolution_ms": 1.0}


def vm_rss_kib(vm: VM) -> int:
    """Peak resident set of one QEMU (VmHWM), from /proc."""
    if vm.pid is None:
        return 0
    for line in Path(f"/proc/{vm.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class Sampler:
    """A scenario hook that records QEMU memory at the held switchover point."""

    rss_kib: list[int] = field(default_factory=list)

    def __call__(self, phase: str, m: Migration, vms: dict[str, VM]) -> None:
        if phase == "switchover":
            self.rss_kib.extend(vm_rss_kib(vm) for vm in vms.values())


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 3) if vals else None


def bench(qemu: str, modes: list[str], iterations: int, accel: str, cache: Path,
          log: Callable[[str], None]) -> list[str]:
    """Run each mode `iterations` times and return the report lines."""
    t0 = time.monotonic()
    guest = build_embedded(cache, log)
    lines = [f"embedded guest ready (cached or built) in {time.monotonic() - t0:.2f} s"]
    caps = probe(qemu)
    lines.append(f"QEMU {caps.version} ({caps.qemu})")
    sampler = Sampler()
    records: dict[str, list[RunRecord]] = {}
    log_kib: dict[str, list[float]] = {}
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
    run(Config(qemu=qemu, mode=modes[0], accel=accel, cache=cache, guest=guest, fault=sampler),
        log=lambda _msg: None)
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
