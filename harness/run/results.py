"""What one hop produced, as frozen values, one per stage of the hop's straight line:
plan -> observe -> analyse -> judge -> assemble (harness.run.session runs it).

Each value is made once, whole, by the stage that produced it, and never changed. A
stage that raised produced nothing: HopResult holds the stages the hop completed, so a
None there means "the hop failed before this stage ended", never "to be filled in".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.analysis import flows, ping, tcp_stream
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
class HopPlan:
    """Who takes part in hop `number` and where its files go, fixed before it starts."""

    number: int  # 1 = the first migration after the boot
    started: str  # ISO-8601, UTC
    sides: tuple[Side, Side]  # source and target: binaries, machine, firmware
    names: tuple[str, str]  # the source's and the target's VM names (their files' stems)
    taps: tuple[str, str]  # the TAP serving the source, the TAP the target is given
    traces: tuple[Path, Path]  # each side's trace of the downtime checkpoints
    socket: Path  # the migration's UNIX socket
    suffix: str  # of the probes' logs: "" for the first hop, "-2" for the second ...


@dataclass(frozen=True)
class Migration:
    """Both sides completed; QEMU's own downtime and when each side said so."""

    downtime_ms: float | None  # query-migrate's figure, when QEMU gives one
    sent: float  # when `migrate` was sent: the probes' settle time ends here
    src_completed: float  # QMP event timestamps (wall clock)
    dst_completed: float


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
class HopLogs:
    """What the probes wrote across the hop, and the source's queue counts."""

    ping: str
    flows: str | None  # None: the hop ran no flows (Config.flows == 0)
    tcp: str | None  # None: no TCP connection (Config.tcp == "off")
    source_queues: QueueCounts | None  # the source's counters over the settle time
    recovered: float | None  # when ICMP and the last flow answered again; None: never


@dataclass(frozen=True)
class Observed:
    """The hop on real QEMUs: the migration, the switch, the resume and the probes' logs."""

    ram_blocks: dict[str, tuple[int, int]]  # name -> (used, total) bytes, both sides alike
    migration: Migration
    switch: Switch | None  # None in local mode: the same TAP serves, nothing moves
    resumed: Resumed
    logs: HopLogs


@dataclass(frozen=True)
class Parsed:
    """The probes' logs, each parsed once; the analysis and the timeline read these."""

    ping: ping.PingLog
    flows: flows.FlowLog | None
    tcp: tcp_stream.TcpLog | None


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
class Analysed:
    """Every figure of the hop, from its observations alone (no QEMU is asked)."""

    parsed: Parsed
    icmp: Icmp
    calibration: Calibration  # epsilon from the host's noise, or the floor
    traffic: Traffic
    breakdown: Breakdown | None  # where the ICMP blackout went; None: no hole to split
    flow_breakdown: Breakdown | None  # the same phases, for the worst flow's hole
    handover: Handover  # per queue: the target's TUN file against the source's
    held_ms: float  # what reading the held files cost, outside the blackout


@dataclass(frozen=True)
class Target:
    """The checks on the target after the hop: fresh flows and the queues they used."""

    queues_after: QueueCounts  # packets per queue pair while the fresh flows ran
    fresh: FlowsSummary
    # Config.all_queues: packets per queue pair once the guest enabled them all.
    all_queues: QueueCounts | None

    def fresh_flows(self) -> list[dict[str, Any]]:
        return [{"flow": r.flow, "port": r.port, "queue": r.queue, "sent": r.sent,
                 "answered": r.answered} for r in self.fresh.flows]


@dataclass(frozen=True)
class SameTap:
    """Local mode: tap0's ifindex and counters before and after the target answered."""

    ifindex: tuple[int, int]
    rx_packets: tuple[int, int]
    tx_packets: tuple[int, int]
    target_runs: bool

    def to_json(self) -> dict[str, list[int]]:
        return {"tap0_ifindex": list(self.ifindex), "tap0_rx_packets": list(self.rx_packets),
                "tap0_tx_packets": list(self.tx_packets)}


@dataclass(frozen=True)
class Verified:
    """What the guest did on the target once the source had quit."""

    same_tap: SameTap | None  # None in new-TAP mode: another TAP serves
    target: Target | None  # None without flows: the guest's ping was the check


@dataclass(frozen=True)
class HopResult:
    """One hop, as far as it got: the stages it completed, its outcome, its timings."""

    plan: HopPlan
    observed: Observed | None
    analysed: Analysed | None
    verified: Verified | None
    footprint: Footprint | None  # the serving QEMU sampled after a judged hop
    error: BaseException | None  # what ended it: a TapmigError, or an interrupt
    duration_s: float
    step_s: dict[str, float] = field(default_factory=dict)  # seconds per step of the hop
    last_good_qemu: dict[str, Any] | None = None  # a chain's failed hop: who was shut
