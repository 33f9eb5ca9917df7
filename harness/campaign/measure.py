"""Repeated migrations over several builds and modes, into run records and one report.

Runs are interleaved (iteration, then mode, then build) so that drift of the host
(thermal state, other load) hits every combination alike instead of biasing the
one that happened to run last.  Each record is on disk as soon as its run ends,
so an interrupted session still yields a partial report of everything finished.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import platform
import re
import string
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.cache import default_cache
from harness.campaign.shards import WHOLE, Shard, check_shard, merge, parse_shard, write_manifest
from harness.errors import EXIT_INCONCLUSIVE, Unsupported, UsageError
from harness.guest.embedded import build_embedded
from harness.guest.spec import Guest
from harness.host.check import check_host
from harness.qemu import accel
from harness.qemu.capabilities import query_capabilities, resolve_qemu
from harness.record import RunRecord
from harness.report import chain_summary, units
from harness.report.summary import Report, build_report, cpu_model, write_report
from harness.run.assemble import placed
from harness.run.config import Config
from harness.run.setup import Setup, check_variant
from harness.vocabulary import MODES, AccelChoice, Mode, TcpPattern, as_mode

Log = Callable[[str], None]

# A campaign with more of its runs inconclusive than this says so and gives no verdict:
# a few noisy moments are a busy host; a fifth of the runs is a host unfit to judge.
MAX_INCONCLUSIVE = 0.2


def stderr_log(msg: str) -> None:
    """Progress goes to stderr, so stdout carries only the Markdown summary."""
    print(f"tapmig: {msg}", file=sys.stderr, flush=True)


def _stamp(started: str) -> str:
    """The run's start in UTC, compact, so record names sort in the order runs began."""
    try:
        when = datetime.fromisoformat(started)
    except ValueError:
        when = datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def write_record(rec: RunRecord, directory: Path) -> Path:
    """Write `<directory>/<timestamp>-<mode>-<n>.json` whole or not at all, never over another.

    n is the first number that makes the name free; a hard link claims the name
    atomically, so parallel writers (pytest-xdist workers) cannot clobber each other.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(rec.to_json(), indent=2) + "\n", encoding="utf-8")
    try:
        n = 1
        while True:
            path = directory / f"{_stamp(rec.started)}-{rec.mode}-{n}.json"
            try:
                path.hardlink_to(tmp)
            except FileExistsError:
                n += 1
                continue
            return path
    finally:
        tmp.unlink()


@dataclass(frozen=True)
class Plan:
    """What to run; `builds` maps a short label (A, B, ...) to a resolved QEMU path.

    With `hops`, each iteration is one chain of that many migrations after one boot
    (harness.run.chain); `iterations` None then means "until `duration_s` is up". A shard
    takes only its own iterations (harness.campaign.shards).
    """

    builds: dict[str, str]
    modes: tuple[Mode, ...]
    iterations: int | None
    out: Path
    accel: AccelChoice = "auto"
    queues: int = 4
    cache: Path = field(default_factory=default_cache)
    guest: Guest | None = None
    shard: Shard = WHOLE
    hops: int | None = None
    duration_s: float | None = None
    epsilon_ms: float | None = None  # None: the accelerator's (see harness.run.config)
    vcpus: int = 1  # traffic (harness.run.traffic): vCPUs, UDP flows, the TCP pattern
    flows: int = 8
    tcp: TcpPattern = "sparse"

    def iteration_numbers(self) -> Iterator[int]:
        its = itertools.count(1) if self.iterations is None else range(1, self.iterations + 1)
        return (i for i in its if self.shard.takes(i))

    @property
    def total(self) -> int | None:
        """Runs (or chains) this shard does; None when only the clock ends them."""
        if self.iterations is None:
            return None
        return len(self.builds) * len(self.modes) * sum(1 for _ in self.iteration_numbers())

    def left_after(self, i: int) -> int:
        """This shard's iterations after i: what skipping a combination saves (none
        to count when only the clock ends the campaign)."""
        if self.iterations is None:
            return 0
        return sum(1 for j in self.iteration_numbers() if j > i)

    def order(self) -> Iterator[tuple[int, Mode, str]]:
        """(iteration, mode, build label), interleaved so drift hits every combination alike."""
        for i in self.iteration_numbers():
            for mode in self.modes:
                for label in self.builds:
                    yield i, mode, label

    def manifest(self) -> dict[str, object]:
        """The plan as shards of one campaign share it: everything but --shard and paths."""
        return {"builds": list(self.builds), "modes": list(self.modes), "queues": self.queues,
                "iterations": self.iterations, "hops": self.hops, "duration_s": self.duration_s,
                "accel": self.accel, "epsilon_ms": self.epsilon_ms, "shards": self.shard.count,
                "vcpus": self.vcpus, "flows": self.flows, "tcp": self.tcp}


def parse_modes(values: Sequence[str]) -> tuple[Mode, ...]:
    """`--mode new-tap,local` and repeated `--mode` both work; order is kept, repeats dropped."""
    words = dict.fromkeys(m.strip() for v in values for m in v.split(",") if m.strip())
    if not words:
        raise UsageError(f"no mode given; use --mode with one or more of {', '.join(MODES)}")
    return tuple(as_mode(w) for w in words)


def check_iterations(n: int) -> int:
    if n < 1:
        raise UsageError(f"--iterations {n}: give at least 1 run per combination")
    return n


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h' or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise UsageError(f"--duration {text!r}: give a positive time like 90s, 30m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass(frozen=True)
class Shape:
    """How many runs or chains: the options that decide it, checked together."""

    iterations: int | None
    hops: int | None = None
    duration_s: float | None = None
    shard: Shard = WHOLE


def shape(iterations: int | None, chain: int | None = None, duration: str | None = None,
          shard: str | None = None) -> Shape:
    """--iterations (runs, or chains per combination), --chain, --duration and --shard."""
    if duration is not None and chain is None:
        raise UsageError("--duration keeps chaining: give it with --chain N (hops per chain)")
    if chain is not None and chain < 1:
        raise UsageError(f"--chain {chain}: give at least 1 hop per chain")
    if iterations is None and chain is None:
        raise UsageError("give --iterations N (runs per build and mode), or --chain N")
    if iterations is not None:
        check_iterations(iterations)
    elif duration is None:
        iterations = 1  # one chain per combination
    part = WHOLE if shard is None else parse_shard(shard)
    check_shard(part, iterations)
    return Shape(iterations, chain, None if duration is None else parse_duration(duration),
                 part)


def describe(plan: Plan) -> str:
    """The one line that says how much work this is, before it starts."""
    size = f"{len(plan.modes)} modes x {len(plan.builds)} builds"
    where = "" if plan.shard == WHOLE else f", shard {plan.shard}"
    if plan.hops is None:
        return f"{plan.total} runs: {plan.iterations} iterations x {size}, interleaved{where}"
    chains = "chains until the time is up" if plan.total is None else f"{plan.total} chains"
    limit = "" if plan.duration_s is None else f", for at most {units.duration(plan.duration_s)}"
    return f"{chains} of {plan.hops} hops ({size}, interleaved{where}{limit})"


def prepare_out(out: Path) -> None:
    """Fail before any run, not after the first 20 s one, if results cannot be kept.

    An earlier session's records are refused rather than mixed into this report.
    """
    try:
        for sub in ("records", "runs"):
            d = out / sub
            d.mkdir(parents=True, exist_ok=True)
            if any(d.iterdir()):
                raise UsageError(f"{out} already holds an earlier measurement ({d} is not "
                                  "empty); pass a new --out directory")
        probe_file = out / f".tapmig-probe-{uuid.uuid4().hex}"
        probe_file.write_text("probe\n")
        probe_file.unlink()
    except OSError as exc:
        raise UsageError(f"output directory {out} is not writable: {exc.strerror or exc}; "
                          "pass a writable --out directory") from exc


def resolve_builds(qemus: Sequence[str]) -> dict[str, str]:
    """Every binary checked before the first run; labels A, B, ... keep progress lines short."""
    paths = [resolve_qemu(q) for q in qemus]
    for path in paths:
        if paths.count(path) > 1:
            raise UsageError(f"--qemu {path} is given twice; each build once, please")
    labels = [string.ascii_uppercase[k] if k < 26 else str(k + 1) for k in range(len(paths))]
    return dict(zip(labels, paths, strict=True))


def preflight(plan: Plan, log: Log) -> dict[str, Setup]:
    """Host, guest and accelerator settled once per build, up front, so each run only
    migrates: the capabilities read here are the only ones the campaign reads.

    Also prints which build each label stands for.  An unusable host, a bad
    --queues or `--accel kvm` without KVM fails here in one line instead of in
    every run; a variant a build lacks is left to its first run to record.
    """
    check_host()
    guest = plan.guest or build_embedded(plan.cache, log)
    setups = {}
    for label, qemu in plan.builds.items():
        caps = query_capabilities(qemu)
        for mode in plan.modes:
            with contextlib.suppress(Unsupported):
                check_variant(Config(qemu, mode, queues=plan.queues, vcpus=plan.vcpus,
                                     flows=plan.flows), caps)
        name, reason = accel.choose(plan.accel, qemu, guest, plan.cache, log)
        log(f"{label} = {qemu} (QEMU {caps.version}); {name}: {reason}")
        setups[label] = Setup(caps, guest, name, reason)
    return setups


def result_text(rec: RunRecord) -> str:
    if rec.status == "ok":
        return (f"blackout {units.ms(rec.blackout_ms, 1)}, "
                f"QMP downtime {units.ms(rec.downtime_ms, 1)}")
    word = "INCONCLUSIVE" if rec.status == "inconclusive" else "FAILED"
    return f"{word}: {(rec.error or 'no reason recorded').splitlines()[0]}"


@dataclass
class Outcome:
    records: list[RunRecord]
    report: Report
    paths: dict[str, Path]
    interrupted: bool

    @property
    def inconclusive(self) -> str | None:
        """Why the campaign gives no verdict: too many runs the host was too noisy to
        judge (over MAX_INCONCLUSIVE of those that ran); None when it can give one."""
        ran = [r for r in self.records if r.status != "unsupported"]
        n = sum(r.status == "inconclusive" for r in ran)
        if not ran or n <= MAX_INCONCLUSIVE * len(ran):
            return None
        return (f"{n} of {len(ran)} runs were inconclusive (the host too noisy to judge "
                f"the outage), over {MAX_INCONCLUSIVE:.0%}: no verdict; run on a quieter "
                "host, or with --accel kvm")

    @property
    def exit_code(self) -> int:
        """130 interrupted, 1 any run failed or a chain leaked, 3 too many runs
        inconclusive to give a verdict, 2 nothing could run at all."""
        statuses = {r.status for r in self.records}
        if self.interrupted:
            return 130
        if "failed" in statuses or chain_summary.leaks(self.report.chains):
            return 1
        if self.inconclusive is not None:
            return EXIT_INCONCLUSIVE
        return 2 if statuses == {"unsupported"} else 0


def begin(plan: Plan) -> str:
    """The shard's manifest, so `tapmig report` can tell shards of one campaign; the start."""
    write_manifest(plan.out, plan.shard, plan.manifest())
    return datetime.now(UTC).isoformat(timespec="seconds")


def keep(rec: RunRecord, plan: Plan, iteration: int, run_dir: str) -> RunRecord:
    """The finished record, stamped with where in the campaign it ran, on disk at once."""
    rec = placed(rec, iteration, None if plan.shard == WHOLE else str(plan.shard),
                 rec.cpu_model or cpu_model(), f"runs/{run_dir}/")
    write_record(rec, plan.out / "records")
    return rec


def merge_report(dirs: list[Path], out: Path, allow_mismatch: bool) -> Outcome:
    """`tapmig report`: the records of several measure directories (shards), one report."""
    records, notes = merge(dirs, allow_mismatch)
    partial = any(n.startswith("shards missing") for n in notes)
    cpus = ", ".join(sorted({r.cpu_model for r in records if r.cpu_model}))
    rep = build_report(records, {"cpu_model": cpus} if cpus else {}, partial, notes)
    return Outcome(records, rep, write_report(rep, out), interrupted=False)


def finish(plan: Plan, records: list[RunRecord], started: str, interrupted: bool) -> Outcome:
    meta = {"host_kernel": platform.release(), "date": started, "accel": plan.accel}
    rep = build_report(records, meta, partial=interrupted)
    return Outcome(records, rep, write_report(rep, plan.out), interrupted)


def config(plan: Plan, mode: Mode, label: str, name: str) -> Config:
    return Config(qemu=plan.builds[label], mode=mode, accel=plan.accel, queues=plan.queues,
                  out=plan.out / "runs" / name, cache=plan.cache, guest=plan.guest,
                  epsilon_ms=plan.epsilon_ms, vcpus=plan.vcpus, flows=plan.flows, tcp=plan.tcp)
