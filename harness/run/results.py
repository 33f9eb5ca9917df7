"""What one hop observed, as typed results: one per phase, set once by the phase's caller.

A phase function returns its result; the hop keeps it here; harness.run.assemble
turns the whole into a RunRecord in one place. A field left None means the hop did
not get that far (the record then says why), never "to be filled in later".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.analysis import ping
from harness.analysis.downtime import Breakdown
from harness.analysis.flows import FlowsSummary
from harness.analysis.handover import Handover
from harness.analysis.noise import Calibration
from harness.analysis.queues import QueueCounts
from harness.analysis.tcp_stream import TcpResult
from harness.host.tunfiles import TunFile
from harness.qemu.side import Side
from harness.run.footprint import Footprint


@dataclass(frozen=True)
class Migration:
    """Both sides completed; QEMU's own downtime and when each side said so."""

    downtime_ms: float | None
    sent: float  # when `migrate` was sent: the probes' settle time ends here
    src_completed: float | None  # QMP event timestamps (wall clock)
    dst_completed: float | None


@dataclass(frozen=True)
class Switch:
    """New-TAP: the host's IP and MAC moved to the target's TAP, in wall-clock seconds."""

    start: float
    end: float


@dataclass(frozen=True)
class HeldFiles:
    """The TUN files both QEMUs held once the target resumed, before the source quit,
    and which (source fd, target fd) pairs the kernel called one open file (kcmp)."""

    source_tap: str  # the TAP that served the source
    target_tap: str  # the TAP the target was given: the same one in local mode
    source: tuple[TunFile, ...]
    target: tuple[TunFile, ...]
    same: frozenset[tuple[int, int]]
    took_ms: float  # what reading /proc and asking kcmp cost, outside the blackout


@dataclass(frozen=True)
class Resumed:
    """STOP (source) and RESUME (target) as QEMU timestamped them; when `cont` was sent;
    the TUN files both held before the source quit."""

    stop: float
    resume: float
    cont_sent: float
    held: HeldFiles

    @property
    def window(self) -> tuple[float, float]:
        return self.stop, self.resume


@dataclass(frozen=True)
class Icmp:
    """The ICMP prober's view of the hop."""

    analysis: ping.Analysis
    lost_when: dict[str, Any]


@dataclass(frozen=True)
class Traffic:
    """The flows and the TCP connection across the hop, and the source's queue counts."""

    source_queues: QueueCounts | None
    flows: FlowsSummary | None
    tcp: TcpResult | None


@dataclass(frozen=True)
class Target:
    """The checks on the target after the hop: fresh flows and the queues they used."""

    queues_after: QueueCounts | None  # packets per queue pair while the fresh flows ran
    fresh: FlowsSummary
    fresh_flows: list[dict[str, Any]] = field(default_factory=list)
    # Config.all_queues: packets per queue pair once the guest enabled them all.
    all_queues: QueueCounts | None = None


@dataclass(frozen=True)
class HopLogs:
    ping: str
    flows: str | None
    tcp: str | None
    source_queues: QueueCounts | None  # the source's counters over the settle time
    recovered: float | None  # when ICMP and the last flow answered again after RESUME
    suffix: str  # "" for the first hop, "-2" for the second ...




@dataclass
class Hop:
    """Every result of one hop. Each is set once, by the code that ran that phase."""

    number: int  # 1 = the first migration after the boot
    started: str  # ISO-8601, UTC
    sides: tuple[Side, Side] | None = None  # source and target: binaries, machine, firmware
    # name -> (used, total) bytes, the same on both sides (harness.analysis.ramblock)
    ram_blocks: dict[str, tuple[int, int]] = field(default_factory=dict)
    logs: HopLogs | None = None  # what the probes wrote, for the timeline
    migration: Migration | None = None
    switch: Switch | None = None
    resumed: Resumed | None = None
    icmp: Icmp | None = None
    traffic: Traffic | None = None
    same_tap: dict[str, list[int]] | None = None  # local mode: tap0 kept, its counters rose
    handover: Handover | None = None  # per queue: the target's TUN file against the source's
    target: Target | None = None
    epsilon_ms: float | None = None
    calibration: Calibration | None = None  # epsilon from the host's noise, or the floor
    breakdown: Breakdown | None = None  # where the ICMP blackout went
    flow_breakdown: Breakdown | None = None  # the same phases, for the worst flow's hole
    footprint: Footprint | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step of the hop
    last_good_qemu: dict[str, Any] | None = None  # a chain's hop that failed: who was shut
