"""The result of one migration run: the only thing scenarios hand to reports.

A record is plain data that round-trips through JSON, so that reports, the
regression verdict and users re-reading CI artifacts never need QEMU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import TapmigError

SCHEMA = "tapmig.run/1"
MODES = ("new-tap", "local")
STATUSES = ("ok", "failed", "unsupported")


@dataclass
class RunRecord:
    """One run. The four numbers are None when the run did not get that far."""

    mode: str
    qemu: str
    qemu_version: str
    accel: str
    guest: str
    vhost: bool = False
    queues: int = 4
    probe: str = "tapmig"
    status: str = "ok"
    error: str | None = None
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
    stop_ts: float | None = None
    resume_ts: float | None = None
    # Context.
    accel_reason: str = ""
    host_kernel: str = ""
    started: str = ""
    duration_s: float | None = None
    iteration: int | None = None
    boot_s: float | None = None
    # Evidence behind the verdict, e.g. tap0's ifindex and counters in local mode.
    checks: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, data: object, source: str = "record") -> RunRecord:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise TapmigError(f"{source}: not a tapmig run record (expected schema {SCHEMA!r})")
        known = {f.name for f in fields(cls)}
        try:
            rec = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise TapmigError(f"{source}: incomplete tapmig run record: {exc}") from exc
        if rec.mode not in MODES or rec.status not in STATUSES:
            raise TapmigError(f"{source}: unknown mode {rec.mode!r} or status {rec.status!r}")
        return rec

    def write(self, path: Path) -> None:
        """Write atomically, so an interrupted run never leaves half a record."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TapmigError(f"{path}: cannot read run record: {exc}") from exc
        return cls.from_json(data, str(path))
