"""QEMU's own downtime checkpoints, as trace events in a file: what to ask for, how QEMU
writes them, and what each side's log says (harness.analysis.downtime lines that up with
the network's hole; it re-exports the readers).

Recent QEMU (10.2.2 with the series, built here) traces `vmstate_downtime_checkpoint`
(src-downtime-start ... dst-precopy-bh-vm-started), and `vmstate_downtime_save`/`_load`
per device with its duration in µs. Debian's 7.2 has none of them; its
`migration_completion_vm_stop`, `savevm_state_*`, `savevm_section_*` and
`qemu_loadvm_state_section*` give a coarser split (harness.analysis.downtime reads both).

Both the source and the target must be traced: the checkpoints after the source's
device save, the per-device loads (virtio-net's load is where v12 takes over the TAP's
fds) and the target's bottom half exist only in the target's log.

The trace's timestamps come only from `-msg timestamp=on`, and are wall-clock UTC, the
clock of QMP event timestamps and of the probes' kernel timestamps:
- 10.2.2: `2026-12-03T11:06:26.637909Z vmstate_downtime_checkpoint src-downtime-start`
  (glib's ISO 8601: the fraction is left out when the µs are exactly 0);
- 7.2: `18660@1796305773.424274:savevm_section_start ram, section_id 2` (the writing
  thread's id, then seconds since the epoch).
Without it, 10.2.2 writes no time at all and 7.2 writes the bare event: useless here.
`-msg timestamp=on` also prefixes QEMU's error_report lines on stderr with the same
ISO time (`2026-...Z qemu-system-x86_64: -device ...`); untimestamped() takes it off
where a stderr line is shown to a person or matched.

The events can also be switched at run time with QMP `trace-event-set-state` (name: a
glob, enable: bool; both binaries; an unknown exact name is an error, a glob that
matches nothing is not), e.g. on only around a hop. The log file (-D, which QEMU opens
at start even with no -trace) and the timestamps (-msg) are command-line only, so
trace_args() is needed either way; enabling at start costs nothing before a migration,
since these events fire only in one.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DOWNTIME_EVENTS = ("vmstate_downtime_checkpoint", "vmstate_downtime_save",
                   "vmstate_downtime_load")
DOWNTIME_PATTERNS = ("vmstate_downtime_*",)
# Debian's 7.2: the stop, each section saved (iterating and at completion), each
# section loaded, and the end of the target's load. All fire once per section or per
# iteration, never per page, so the cost stays that of a few hundred lines per hop.
LEGACY_EVENTS = ("migration_completion_vm_stop", "savevm_state_setup",
                 "savevm_state_iterate", "savevm_state_complete_precopy",
                 "savevm_state_cleanup", "savevm_section_start", "savevm_section_end",
                 "qemu_loadvm_state_section", "qemu_loadvm_state_section_startfull",
                 "qemu_loadvm_state_section_partend", "process_incoming_migration_co_end")

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_ISO = re.compile(r"^(?P<date>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<frac>\d{1,9}))?"
                  r"(?P<tz>Z|[+-]\d\d(?::?\d\d)?) (?P<rest>.*)$")
_TID = re.compile(r"^(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d{6}):(?P<rest>.*)$")
_EVENT = re.compile(r"^(?P<name>[A-Za-z0-9_]+)(?: (?P<args>.*))?$")
_STDERR_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d(?::?\d\d)?) ")
_SECTION = re.compile(r"^(?P<id>.*), section_id (?P<sid>\d+)(?: -> (?P<ret>-?\d+))?$")
_STARTFULL = re.compile(r"^(?P<sid>\d+)\((?P<id>.*)\) (?P<inst>\d+) \d+$")
_DOWNTIME = re.compile(r"^type=(?P<type>\S+) idstr=(?P<id>\S+) instance_id=(?P<inst>\d+) "
                       r"downtime=(?P<us>-?\d+)$")
ProblemKind = Literal["missing", "unreadable", "empty", "unparsed", "cut-short"]


def trace_args(log: Path, events: Sequence[str]) -> list[str]:
    """QEMU's arguments that write the events (names or globs) to `log`, timestamped;
    none at all for no events, so "not traced" is the same call."""
    if not events:
        return []
    args: list[str] = []
    for pattern in events:
        args += ["-trace", "enable=" + pattern.replace(",", ",,")]  # QemuOpts escaping
    return [*args, "-D", str(log), "-msg", "timestamp=on"]


def has_downtime_events(available: Iterable[str]) -> bool:
    return set(DOWNTIME_EVENTS) <= set(available)


def trace_patterns(available: frozenset[str]) -> tuple[str, ...]:
    """What tapmig asks a QEMU to trace: the vmstate_downtime events where it has them,
    else those of LEGACY_EVENTS it has (for an unknown exact name QEMU warns on stderr,
    whose last line tapmig shows); () when it has neither: trace_args() adds nothing."""
    if has_downtime_events(available):
        return DOWNTIME_PATTERNS
    return tuple(e for e in LEGACY_EVENTS if e in available)


@dataclass(frozen=True)
class TraceLine:
    """One line of QEMU's log trace backend, with its wall-clock time in µs since the
    epoch (integers, so that phases built on them add up exactly)."""

    ts_us: int
    name: str
    args: str
    tid: int | None  # the writing thread's id, where QEMU prefixes it (7.2)


def parse_line(line: str) -> TraceLine | None:
    """A trace line in either timestamped format; None for anything else (an
    untimestamped event, another log's output, a partial line)."""
    if m := _ISO.match(line):
        ts_us = _iso_us(m.group("date"), m.group("frac"), m.group("tz"))
        tid, rest = None, m.group("rest")
    elif m := _TID.match(line):
        ts_us = int(m.group("sec")) * 1_000_000 + int(m.group("usec"))
        tid, rest = int(m.group("tid")), m.group("rest")
    else:
        return None
    if ts_us is None or not (e := _EVENT.match(rest.rstrip())):
        return None
    return TraceLine(ts_us, e.group("name"), e.group("args") or "", tid)


def _iso_us(date: str, frac: str | None, tz: str) -> int | None:
    try:
        tm = time.strptime(date, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    offset = 0
    if tz != "Z":
        digits = tz[1:].replace(":", "")
        offset = (int(digits[:2]) * 60 + int(digits[2:4] or 0)) * 60
        offset = -offset if tz[0] == "-" else offset
    us = int((frac or "0").ljust(6, "0")[:6])
    return (calendar.timegm(tm) - offset) * 1_000_000 + us


def untimestamped(line: str) -> str:
    """A stderr line without the time -msg timestamp=on puts before QEMU's messages."""
    return _STDERR_TS.sub("", line, count=1)


@dataclass(frozen=True)
class TraceProblem:
    """Why a trace log explains less than it should; a record names it, the run goes on."""

    kind: ProblemKind
    path: str
    detail: str

    def __str__(self) -> str:
        return f"trace {self.path}: {self.kind}: {self.detail}"


@dataclass(frozen=True)
class TraceLog:
    """The lines of one QEMU's -D file that parsed, and what was wrong with the rest."""

    path: str
    lines: tuple[TraceLine, ...]
    problems: tuple[TraceProblem, ...] = ()


def parse_trace(text: str, path: str = "-") -> TraceLog:
    """Typed lines of either timestamped format; a partial last line (QEMU killed mid-
    write, a copy taken too early) and untimestamped lines are named problems."""
    problems: list[TraceProblem] = []
    if not text.strip():
        return TraceLog(path, (), (TraceProblem("empty", path, "the file has no lines"),))
    rows = text.split("\n")
    if rows[-1]:
        problems.append(TraceProblem("cut-short", path, f"last line is partial: {rows[-1]!r}"))
    parsed = [(row, parse_line(row)) for row in rows[:-1] if row.strip()]
    bad = [row for row, line in parsed if line is None]
    if bad:
        problems.append(TraceProblem("unparsed", path, f"{len(bad)} lines without the time "
                                     f"-msg timestamp=on writes, e.g. {bad[0]!r}"))
    lines = tuple(line for _, line in parsed if line is not None)
    return TraceLog(path, lines, tuple(problems))


def load_trace(path: Path) -> TraceLog:
    """parse_trace() of a file; a missing or unreadable one is a problem, not an error."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return TraceLog(str(path), (), (TraceProblem("missing", str(path), "no such file"),))
    except OSError as exc:
        return TraceLog(str(path), (), (TraceProblem("unreadable", str(path),
                                                     str(exc.strerror)),))
    return parse_trace(text, str(path))


@dataclass(frozen=True)
class Device:
    """One device's state saved or loaded in the downtime, by QEMU's own measure (7.2:
    from its section's trace lines)."""

    idstr: str
    instance_id: int
    type: str  # iterable or non-iterable
    us: int
    end_us: int  # when it was done, on the trace's clock

    @property
    def virtio_net(self) -> bool:
        return self.idstr.split("/")[-1] == "virtio-net"

    def to_json(self) -> dict[str, Any]:
        return {"idstr": self.idstr, "instance_id": self.instance_id, "type": self.type,
                "ms": round(self.us / 1000, 3)}


@dataclass(frozen=True)
class Side:
    """One side of one migration, as its trace tells: checkpoints by their 10.2.2 names,
    each with the event it was read from (they differ on 7.2), and the devices."""

    kind: Literal["vmstate_downtime", "savevm_state", "none"]
    checkpoints: Mapping[str, int] = field(default_factory=dict)
    by: Mapping[str, str] = field(default_factory=dict)
    devices: tuple[Device, ...] = ()
    problems: tuple[TraceProblem, ...] = ()


def _last(lines: Sequence[TraceLine], name: str, args: str | None = None) -> int | None:
    hits = [i for i, ln in enumerate(lines) if ln.name == name
            and (args is None or ln.args == args)]
    return hits[-1] if hits else None


def source_side(log: TraceLog) -> Side:
    """The source's last outgoing migration (in a chain, a target later migrates on)."""
    lines = log.lines
    start = _last(lines, "vmstate_downtime_checkpoint", "src-downtime-start")
    if start is None:
        return _legacy_source(log)
    cps = {ln.args: ln.ts_us for ln in lines[start:] if ln.name == "vmstate_downtime_checkpoint"}
    devices = tuple(d for ln in lines[start:] if ln.name == "vmstate_downtime_save"
                    and (d := _downtime_device(ln)) is not None)
    problems = list(log.problems)
    if "src-downtime-end" not in cps:
        problems.append(TraceProblem("cut-short", log.path, "src-downtime-start but no "
                                     "src-downtime-end: the file ends mid-migration"))
    return Side("vmstate_downtime", cps, {k: k for k in cps}, devices, tuple(problems))


def target_side(log: TraceLog) -> Side:
    """The target's incoming migration: its loads, then its bottom half."""
    lines = log.lines
    if not any(ln.name == "vmstate_downtime_load" or ln.args.startswith("dst-precopy-")
               for ln in lines):
        return _legacy_target(log)
    cps: dict[str, int] = {}
    for ln in lines:
        if ln.name == "vmstate_downtime_checkpoint" and ln.args.startswith("dst-"):
            cps.setdefault(ln.args, ln.ts_us)
    done = cps.get("dst-precopy-loadvm-completed")
    devices = tuple(d for ln in lines if ln.name == "vmstate_downtime_load"
                    and (done is None or ln.ts_us <= done)
                    and (d := _downtime_device(ln)) is not None)
    problems = list(log.problems)
    if "dst-precopy-bh-vm-started" not in cps:
        problems.append(TraceProblem("cut-short", log.path, "no dst-precopy-bh-vm-started: "
                                     "the file ends before the target completed"))
    return Side("vmstate_downtime", cps, {k: k for k in cps}, devices, tuple(problems))


def _downtime_device(ln: TraceLine) -> Device | None:
    m = _DOWNTIME.match(ln.args)
    if m is None:
        return None
    return Device(m.group("id"), int(m.group("inst")), m.group("type"), int(m.group("us")),
                  ln.ts_us)


def _legacy_source(log: TraceLog) -> Side:
    """7.2: after migration_completion_vm_stop, each section's start and end; a section
    the source also sent while iterating is iterable."""
    lines = log.lines
    stop = _last(lines, "migration_completion_vm_stop")
    if stop is None:
        return Side("none", problems=log.problems)
    setup = _last(lines[:stop], "savevm_state_setup") or 0
    iterable = {m.group("id") for ln in lines[setup:stop] if ln.name == "savevm_section_start"
                and (m := _SECTION.match(ln.args))}
    opened: dict[str, tuple[str, int]] = {}
    devices: list[Device] = []
    for ln in lines[stop:]:
        if (m := _SECTION.match(ln.args)) is None:
            continue
        if ln.name == "savevm_section_start":
            opened[m.group("sid")] = (m.group("id"), ln.ts_us)
        elif ln.name == "savevm_section_end" and m.group("sid") in opened:
            idstr, t0 = opened.pop(m.group("sid"))
            kind = "iterable" if idstr in iterable else "non-iterable"
            devices.append(Device(idstr, 0, kind, ln.ts_us - t0, ln.ts_us))
    cps = {"src-vm-stopped": lines[stop].ts_us}
    by = {"src-vm-stopped": "migration_completion_vm_stop"}
    for cp, kinds, which in (("src-iterable-saved", ("iterable",), "last iterable"),
                             ("src-non-iterable-saved", ("iterable", "non-iterable"), "last")):
        if ends := [d.end_us for d in devices if d.type in kinds]:
            cps[cp], by[cp] = max(ends), f"savevm_section_end ({which})"
    problems = list(log.problems)
    if _last(lines[stop:], "savevm_state_cleanup") is None:
        problems.append(TraceProblem("cut-short", log.path, "migration_completion_vm_stop "
                                     "but no savevm_state_cleanup after it"))
    return Side("savevm_state", cps, by, tuple(devices), tuple(problems))


def _legacy_target(log: TraceLog) -> Side:
    """7.2: a section loaded in the downtime (an iterable's END, a FULL one) runs from its
    header's trace line to the next section's; instance ids come from the FULL header."""
    names: dict[str, tuple[str, int]] = {}
    devices: list[Device] = []
    section, opened = -1, None  # the type of the section being read; a device in load
    for ln in log.lines:
        if ln.name in ("qemu_loadvm_state_section", "process_incoming_migration_co_end"):
            if opened is not None:
                idstr, inst, kind, t0 = opened
                devices.append(Device(idstr, inst, kind, ln.ts_us - t0, ln.ts_us))
            opened = None
            section = int(ln.args) if ln.args.strip().isdigit() else -1
        if ln.name == "qemu_loadvm_state_section_startfull" and (m := _STARTFULL.match(ln.args)):
            names[m.group("sid")] = (m.group("id"), int(m.group("inst")))
            if section == 4:  # QEMU_VM_SECTION_FULL
                opened = (m.group("id"), int(m.group("inst")), "non-iterable", ln.ts_us)
        elif ln.name == "qemu_loadvm_state_section_partend" and section == 3:  # _END
            idstr, inst = names.get(ln.args.strip(), (f"section {ln.args.strip()}", 0))
            opened = (idstr, inst, "iterable", ln.ts_us)
        if ln.name == "process_incoming_migration_co_end":
            cps = {"dst-precopy-loadvm-completed": ln.ts_us}
            by = {"dst-precopy-loadvm-completed": ln.name}
            return Side("savevm_state", cps, by, tuple(devices), log.problems)
    if not names:
        return Side("none", problems=log.problems)
    return Side("savevm_state", devices=tuple(devices), problems=(*log.problems, TraceProblem(
        "cut-short", log.path, "sections loaded but no process_incoming_migration_co_end")))
