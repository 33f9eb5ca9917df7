"""The shape of a report: dataclasses that are report.json, and read it back.

report.json is the source of truth, so `compare` never needs the runs again. Files
written before a field existed still load: the field reads as unknown, and
`compare` says it could not check it rather than guessing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from harness.vocabulary import Mode, as_mode

SCHEMA = "tapmig.report/1"
METRICS = ("blackout_ms", "downtime_ms", "stop_resume_ms", "lost")
JUDGED = {"blackout_ms": "blackout", "downtime_ms": "QMP downtime"}
# The traffic figures (harness.run.hop_probes), summarized where a combination's runs have them.
TRAFFIC_METRICS = ("flow_blackout_ms", "flow_spread_ms", "flow_lost", "tcp_stall_ms",
                   "tcp_retrans")
# Judged by compare when both reports have them: older reports do not.
TRAFFIC_JUDGED = {"flow_blackout_ms": "worst-flow blackout", "tcp_stall_ms": "TCP stall"}
# Counts of rare events, judged as counts (a rate per run with an exact interval, and an
# exact test between two reports), never as a median of small integers.
COUNTED = {"lost_in_window": "ICMP lost STOP->RESUME",
           "flow_lost_in_window": "flows lost STOP->RESUME",
           # Every ICMP request never answered: those in flight at STOP too, which a
           # stopped source that still reads the TAP drops as well.
           "lost": "ICMP lost"}
UNKNOWN = "unknown"


@dataclass
class Summary:
    """One figure of one combination over its ok runs; `missing` counts ok runs without it."""

    n: int = 0
    missing: int = 0
    min: float | None = None
    median: float | None = None
    p95: float | None = None
    max: float | None = None
    ci: list[float] | None = None  # 95% bootstrap interval of the median; None below n=3

    @property
    def ci_is_range(self) -> bool:
        """The interval is just [min, max]: too few runs for the bootstrap to narrow it,
        so a verdict on it says little."""
        return self.ci is not None and self.ci == [self.min, self.max]


@dataclass
class Count:
    """A count over a combination's ok runs that have it: the total, its rate per run and
    the rate's exact 95% interval (harness.report.stats.rate_ci)."""

    total: int
    runs: int
    rate: float
    ci: list[float]


@dataclass
class Outcomes:
    """How many runs ended this way, and why, so gaps stay visible in the report."""

    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class Combination:
    """The statistics of one (QEMU binary, mode), over all its runs."""

    key: str
    qemu: str
    qemu_version: str
    mode: Mode
    build: str  # version and the shortest path tail that tells the builds apart
    runs: int
    ok: int
    failed: Outcomes
    unsupported: Outcomes
    metrics: dict[str, Summary]
    # Timeline pictures (harness.report.timeline) of the run with the median blackout and of
    # the worst one, relative to the report's directory.
    timelines: dict[str, str] = field(default_factory=dict)
    # Where the blackout goes (harness.report.phase_summary): per phase of the ICMP hole,
    # and per sum of a kind ("sum:QEMU", "sum:harness time") and virtio-net's save and
    # load, over the ok runs with a breakdown; n=0 where every run lacked it (not
    # available), absent where this mode has no such step. Empty in reports before them.
    phases: dict[str, Summary] = field(default_factory=dict)
    breakdowns: int = 0  # ok runs with a breakdown
    breakdown_notes: list[str] = field(default_factory=list)  # what was not available
    # Runs the host was too noisy to judge: counted apart, never ok nor failed; an older
    # report has none.
    inconclusive: Outcomes = field(default_factory=Outcomes)
    counts: dict[str, Count] = field(default_factory=dict)  # COUNTED; empty in older reports
    # A live update's target binary ("" for a binary migrated to itself), and the machine
    # type both sides ran ("" in older reports).
    target_qemu: str = ""
    target_qemu_version: str = ""
    machine: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Combination:
        return cls(**{**data, "mode": as_mode(data["mode"]),
                      "failed": Outcomes(**data["failed"]),
                      "unsupported": Outcomes(**data["unsupported"]),
                      "inconclusive": Outcomes(**data.get("inconclusive", {})),
                      "metrics": {m: Summary(**s) for m, s in data["metrics"].items()},
                      "phases": {p: Summary(**s) for p, s in data.get("phases", {}).items()},
                      "counts": {m: Count(**c) for m, c in data.get("counts", {}).items()}})


@dataclass
class Ratio:
    """num/den of medians: builds sharing a mode, or local/new-tap on one build."""

    metric: str
    label: str
    num: str  # Combination.key
    den: str
    ratio: float | None
    ci: list[float] | None


@dataclass
class PhaseDiff:
    """local - new-TAP of one phase on one build: the difference of the medians, with the
    95% bootstrap interval (each side resampled alone); `note` where a side lacks it."""

    label: str  # the build
    num: str  # Combination.key of local
    den: str  # Combination.key of new-tap
    phase: str
    delta: float | None
    ci: list[float] | None
    n_num: int
    n_den: int
    note: str = ""


@dataclass
class Point:
    """One ok run, for the per-iteration plot."""

    iteration: int
    blackout_ms: float | None
    downtime_ms: float | None
    flow_blackout_ms: float | None = None  # the worst flow's, where the run had flows


@dataclass
class Meta:
    """What ran, and where: the context `compare` checks before it judges anything."""

    qemu_versions: str = UNKNOWN
    accel: str = UNKNOWN
    guest: str = UNKNOWN
    host_kernel: str = UNKNOWN
    cpu_model: str = UNKNOWN
    prober: str = UNKNOWN
    probe_interval_ms: float | None = None  # median achieved spacing of the probe
    queues: str = UNKNOWN  # queue layout, e.g. "4 queues, vhost off"
    date: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # caller's keys, kept as given

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data.pop("extra"), **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Meta:
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: str(v) for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)


@dataclass
class Report:
    """Everything `tapmig measure` learnt; `partial` if it was interrupted."""

    partial: bool
    meta: Meta
    combinations: list[Combination]
    ratios: list[Ratio]
    series: dict[str, list[Point]]  # by Combination.key
    # Chained campaigns: per chain, its end, footprint and leak/drift findings
    # (harness.report.chain_summary); and notes of a merge of shards (harness.campaign.shards).
    chains: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    phase_diffs: list[PhaseDiff] = field(default_factory=list)  # local - new-TAP, per phase

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "partial": self.partial, "meta": self.meta.to_json(),
                "combinations": [asdict(c) for c in self.combinations],
                "ratios": [asdict(r) for r in self.ratios],
                "series": {k: [asdict(p) for p in pts] for k, pts in self.series.items()},
                "chains": self.chains, "notes": self.notes,
                "phase_diffs": [asdict(d) for d in self.phase_diffs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """Raises KeyError, TypeError or UsageError on a file that is not a whole report."""
        combos = [Combination.from_json(c) for c in data["combinations"]]
        if lacking := [m for c in combos for m in JUDGED if m not in c.metrics]:
            raise KeyError(lacking[0])
        return cls(partial=bool(data.get("partial", False)),
                   meta=Meta.from_json(data.get("meta", {})), combinations=combos,
                   ratios=[Ratio(**r) for r in data.get("ratios", [])],
                   series={k: [Point(**p) for p in pts]
                           for k, pts in data.get("series", {}).items()},
                   chains=list(data.get("chains", [])), notes=list(data.get("notes", [])),
                   phase_diffs=[PhaseDiff(**d) for d in data.get("phase_diffs", [])])
