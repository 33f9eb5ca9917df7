"""Repeated migrations over several builds and modes, into run records and one report.

Runs are interleaved (iteration, then mode, then build) so that drift of the host
(thermal state, other load) hits every combination alike instead of biasing the
one that happened to run last.  Each record is on disk as soon as its run ends,
so an interrupted session still yields a partial report of everything finished.
"""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import string
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from harness import accel, scenario
from harness.cache import default_cache
from harness.errors import TapmigError
from harness.guest import Guest, build_embedded
from harness.probe import probe, resolve_qemu
from harness.record import MODES, RunRecord
from harness.report import Report, build_report, write_report
from harness.scenario import Config

Runner = Callable[[Config], RunRecord]
Log = Callable[[str], None]


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
    """What to run; `builds` maps a short label (A, B, ...) to a resolved QEMU path."""

    builds: dict[str, str]
    modes: tuple[str, ...]
    iterations: int
    out: Path
    accel: str = "auto"
    queues: int = 4
    cache: Path = field(default_factory=default_cache)
    guest: Guest | None = None

    @property
    def total(self) -> int:
        return len(self.builds) * len(self.modes) * self.iterations

    def order(self) -> Iterator[tuple[int, str, str]]:
        """(iteration, mode, build label), interleaved so drift hits every combination alike."""
        for i in range(1, self.iterations + 1):
            for mode in self.modes:
                for label in self.builds:
                    yield i, mode, label


def parse_modes(values: Sequence[str]) -> tuple[str, ...]:
    """`--mode new-tap,local` and repeated `--mode` both work; order is kept, repeats dropped."""
    modes = tuple(dict.fromkeys(m.strip() for v in values for m in v.split(",") if m.strip()))
    if not modes:
        raise TapmigError(f"no mode given; use --mode with one or more of {', '.join(MODES)}")
    for mode in modes:
        if mode not in MODES:
            raise TapmigError(f"unknown mode {mode!r}; use one or more of {', '.join(MODES)}, "
                              "comma-separated")
    return modes


def check_iterations(n: int) -> int:
    if n < 1:
        raise TapmigError(f"--iterations {n}: give at least 1 run per combination")
    return n


def prepare_out(out: Path) -> None:
    """Fail before any run, not after the first 20 s one, if results cannot be kept.

    An earlier session's records are refused rather than mixed into this report.
    """
    try:
        for sub in ("records", "runs"):
            d = out / sub
            d.mkdir(parents=True, exist_ok=True)
            if any(d.iterdir()):
                raise TapmigError(f"{out} already holds an earlier measurement ({d} is not "
                                  "empty); pass a new --out directory")
        probe_file = out / f".tapmig-probe-{uuid.uuid4().hex}"
        probe_file.write_text("probe\n")
        probe_file.unlink()
    except OSError as exc:
        raise TapmigError(f"output directory {out} is not writable: {exc.strerror or exc}; "
                          "pass a writable --out directory") from exc


def resolve_builds(qemus: Sequence[str]) -> dict[str, str]:
    """Every binary checked before the first run; labels A, B, ... keep progress lines short."""
    paths = [resolve_qemu(q) for q in qemus]
    for path in paths:
        if paths.count(path) > 1:
            raise TapmigError(f"--qemu {path} is given twice; each build once, please")
    labels = [string.ascii_uppercase[k] if k < 26 else str(k + 1) for k in range(len(paths))]
    return dict(zip(labels, paths, strict=True))


def preflight(plan: Plan, log: Log) -> Plan:
    """Host, guest and accelerator settled once, up front, so each run only migrates.

    Also prints which build each label stands for.  An unusable host, a bad
    --queues or `--accel kvm` without KVM fails here in one line instead of in
    every run; a variant a build lacks is left to its first run to record.
    """
    scenario.check_host()
    guest = plan.guest or build_embedded(plan.cache, log)
    for label, qemu in plan.builds.items():
        caps = probe(qemu)
        for mode in plan.modes:
            with contextlib.suppress(scenario.Unsupported):
                scenario.check_variant(Config(qemu, mode, queues=plan.queues), caps)
        name, reason = accel.choose(plan.accel, qemu, guest, plan.cache, log)
        log(f"{label} = {qemu} (QEMU {caps.version}); {name}: {reason}")
    return replace(plan, guest=guest)


def run_logged(cfg: Config) -> RunRecord:
    """scenario.run with its chatter in the run's tapmig.log, keeping stderr to a line per run."""
    assert cfg.out is not None, "measure gives every run its own directory"
    cfg.out.mkdir(parents=True, exist_ok=True)
    with (cfg.out / "tapmig.log").open("a", encoding="utf-8") as f:
        return scenario.run(cfg, log=lambda msg: print(msg, file=f, flush=True))


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _result(rec: RunRecord) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} ms"

    if rec.status == "ok":
        return f"blackout {ms(rec.blackout_ms)}, QMP downtime {ms(rec.downtime_ms)}"
    return f"FAILED: {(rec.error or 'no reason recorded').splitlines()[0]}"


@dataclass
class Outcome:
    records: list[RunRecord]
    report: Report
    paths: dict[str, Path]
    interrupted: bool

    @property
    def exit_code(self) -> int:
        """130 interrupted, 1 any run failed, 2 nothing could run at all, else 0."""
        statuses = {r.status for r in self.records}
        if self.interrupted:
            return 130
        if "failed" in statuses:
            return 1
        return 2 if statuses == {"unsupported"} else 0


def measure(plan: Plan, runner: Runner = run_logged, log: Log = stderr_log) -> Outcome:
    """Every planned run, then the report; Ctrl-C (or SIGTERM) still writes a partial one.

    A combination the build cannot run is reported once and its later
    iterations skipped; failed runs are kept, counted and do not stop the rest.
    """
    records: list[RunRecord] = []
    skipped: set[tuple[str, str]] = set()
    total, busy = plan.total, []
    started = datetime.now(UTC).isoformat(timespec="seconds")
    width = len(str(plan.iterations))
    interrupted = False
    try:
        for i, mode, label in plan.order():
            if (label, mode) in skipped:
                continue
            name = f"{i:0{width}d}-{mode}-{label}"
            cfg = Config(qemu=plan.builds[label], mode=mode, accel=plan.accel,
                         queues=plan.queues, out=plan.out / "runs" / name, cache=plan.cache,
                         guest=plan.guest)
            t0 = time.monotonic()
            rec = runner(cfg)
            rec.iteration = i
            rec.artifacts = {k: f"runs/{name}/{v}" for k, v in rec.artifacts.items()}
            write_record(rec, plan.out / "records")
            records.append(rec)
            head = f"[{len(records)}/{total}] #{i} {label} {mode}:"
            if rec.status == "unsupported":
                skipped.add((label, mode))
                total -= plan.iterations - i
                log(f"{head} not supported, skipping its {plan.iterations - i} remaining "
                    f"runs: {rec.error}")
                continue
            busy.append(time.monotonic() - t0)
            eta = statistics.mean(busy) * (total - len(records))
            log(f"{head} {_result(rec)} ({busy[-1]:.0f}s); ETA {_duration(eta)}")
    except KeyboardInterrupt:
        interrupted = True
        log(f"interrupted after {len(records)} of {total} runs; writing a partial report")
    meta = {"host_kernel": platform.release(), "date": started, "accel": plan.accel}
    rep = build_report(records, meta, partial=interrupted)
    return Outcome(records, rep, write_report(rep, plan.out), interrupted)
