"""The result of one migration run: the only thing scenarios hand to reports.

A record is plain data that round-trips through JSON, so that reports, the
regression verdict and users re-reading CI artifacts never need QEMU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness import atomic
from harness.errors import UsageError
from harness.vocabulary import (
    MODES,
    STATUSES,
    Accel,
    Interface,
    Mode,
    Prober,
    Status,
    TcpPattern,
)

SCHEMA = "tapmig.run/1"


@dataclass
class RunRecord:
    """One run. The four numbers are None when the run did not get that far."""

    mode: Mode
    qemu: str
    qemu_version: str
    accel: Accel
    guest: str
    vhost: bool = False
    queues: int = 4
    prober: Prober = "tapmig"
    status: Status = "ok"
    error: str | None = None
    # What failed, as the error's class and attributes (side, status, check ...), so
    # that tests and tools never parse the message.
    failure: dict[str, Any] | None = None
    # What `tapmig run` exits with: the error class's own code (harness.errors), 130 for
    # an interrupt, 0 when ok. An older record has none, and reads as 0 only when ok.
    exit_code: int | None = None
    interface: Interface = "none"  # which interface of the series the QEMU speaks
    # The target's binary, when a live update migrates to another one (else the same as
    # qemu); an older record has "", which means the same binary.
    target_qemu: str = ""
    target_qemu_version: str = ""
    target_interface: Interface = "none"
    machine: str = ""  # the machine type both sides ran, versioned (pc-q35-10.2)
    guest_cpu: str = ""  # the -cpu model both sides ran
    # The four numbers.
    blackout_ms: float | None = None
    lost: int | None = None
    downtime_ms: float | None = None
    stop_resume_ms: float | None = None
    # How far the figures can be trusted.
    resolution_ms: float | None = None  # probe spacing at the blackout's edges
    interval_ms: float | None = None  # achieved probe interval over the run
    late_replies: int | None = None
    blackout_start: float | None = None
    blackout_end: float | None = None
    pre_stop_ms: float | None = None  # how long before STOP the outage began
    epsilon_ms: float | None = None  # the slack the outage was checked against
    # Where epsilon_ms came from: the host's noise before the migration, the floor (the
    # accelerator's figure, or --epsilon-ms), which one was used, whether the outage
    # could be judged at all (harness.analysis.noise.Calibration).
    calibration: dict[str, Any] | None = None
    stop_ts: float | None = None
    resume_ts: float | None = None
    # When the ICMP requests that never got a reply were sent: how many before STOP,
    # between STOP and RESUME and after, the first and last in ms from STOP.
    lost_when: dict[str, Any] = field(default_factory=dict)
    # Requests sent between STOP and RESUME that were never answered: ICMP's, and every
    # flow's together. Local migration promises none (what arrives while the VM is
    # stopped waits in the TAP); new-TAP drops what reaches the old TAP.
    lost_in_window: int | None = None
    # Traffic beyond ICMP (harness.run.hop_probes); blackout_ms stays the ICMP figure.
    vcpus: int = 1  # with vcpus >= queues, every queue pair is live in the guest
    flows: int = 0  # K UDP flows on distinct ports; 0: not run
    all_queues: bool = False  # the guest enabled every queue pair after the hop
    flow_blackout_ms: float | None = None  # the worst flow's blackout
    flow_blackout_min_ms: float | None = None  # the best flow's
    flow_spread_ms: float | None = None  # worst - best
    flow_lost: int | None = None  # requests of all flows never answered
    flow_late: int | None = None
    flow_lost_in_window: int | None = None
    flow_detail: list[dict[str, Any]] = field(default_factory=list)  # one per flow
    queues_live: int | None = None  # queue pairs the guest's driver uses
    # Packets per queue pair as the guest counted them: "before" on the source over
    # the settle time, "after" on the target while fresh flows ran.
    queue_packets: dict[str, Any] = field(default_factory=dict)
    queues_all_carried: bool | None = None  # every live queue pair, both ways, on the target
    tcp: TcpPattern = "off"  # the TCP connection's pattern; "off": not run
    # The longest wait for progress, with data outstanding, overlapping [STOP, RESUME + eps].
    tcp_stall_ms: float | None = None
    tcp_retrans: int | None = None  # TCP_INFO total_retrans of the host's end
    tcp_rto: bool | None = None  # whether a retransmission timeout fired
    tcp_detail: dict[str, Any] = field(default_factory=dict)
    # Context.
    accel_reason: str = ""
    host_kernel: str = ""
    started: str = ""
    duration_s: float | None = None
    iteration: int | None = None
    boot_s: float | None = None
    # A chained campaign (harness.run.chain): the chain, the hop in it (1 = the first
    # migration after the one boot), the shard ("i/n") that ran it, and what the
    # serving QEMU, the namespace and tapmig held after the hop (harness.run.footprint).
    chain: str | None = None
    hop: int | None = None
    shard: str | None = None
    cpu_model: str = ""
    footprint: dict[str, Any] | None = None
    step_s: dict[str, float] = field(default_factory=dict)  # seconds, per step of a hop
    # Where the ICMP blackout went, and the worst flow's: QEMU's downtime checkpoints
    # and the harness's own steps, on one clock (harness.analysis.downtime.Breakdown).
    downtime_breakdown: dict[str, Any] | None = None
    flow_breakdown: dict[str, Any] | None = None
    # Evidence behind the verdict, e.g. tap0's ifindex and counters in local mode.
    checks: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: object, source: str = "record") -> RunRecord:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(f"{source}: not a tapmig run record (expected schema {SCHEMA!r})")
        known = {f.name for f in fields(cls)}
        # Records written under earlier names of two fields.
        for old, new in (("probe", "prober"), ("phases", "step_s")):
            if old in data and new not in data:
                data = {**data, new: data[old]}
        try:
            rec = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise UsageError(f"{source}: incomplete tapmig run record: {exc}") from exc
        if rec.mode not in MODES or rec.status not in STATUSES:
            raise UsageError(f"{source}: unknown mode {rec.mode!r} or status {rec.status!r}")
        return rec

    def write(self, path: Path) -> None:
        """Write atomically, so an interrupted run never leaves half a record."""
        atomic.write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read run record: {exc}") from exc
        return cls.from_json(data, str(path))
