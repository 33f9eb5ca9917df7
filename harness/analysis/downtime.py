"""Where the blackout goes: one hole between replies, split into QEMU's own downtime
checkpoints and the harness's steps, on one wall clock.

The inputs are the trace logs of both QEMUs (harness.qemu.trace), the wall-clock marks
the harness takes in the hop (HopMarks), and a hole: (last reply before, first reply
after), the ICMP blackout or the worst flow's. The phases run consecutively from hole[0]
to hole[1], in this order, each ending at the boundary named after it:

    pre_stop           -> src-downtime-start (without it: the source's STOP event)
    src_stop           -> src-vm-stopped
    ram                -> src-iterable-saved (the iterable state: RAM, dirty bitmaps)
    devices_saved      -> src-non-iterable-saved
    transfer_and_load  -> dst-precopy-loadvm-completed (the last bytes, the target's loads)
    dst_complete       -> the target's MIGRATION completed (or dst-precopy-bh-vm-started)
    src_complete       -> both sides completed (0 when the source was first; only with
                          HopMarks.src_completed): the harness waits for both
    harness_qmp        -> host switch start, or `cont` sent where nothing moves (local)
    host_switch        -> host switch end (new-TAP only)
    harness_cont       -> `cont` sent (new-TAP only)
    cont_to_resume     -> the target's RESUME
    guest_warmup       -> hole[1]

Rules, so that the phases add up to the blackout exactly (integer µs) and none is
negative or invented:
- A boundary that is missing, or earlier on the clock than the last one kept (the
  earlier one wins), is dropped; the time from the last kept boundary to the next one
  is a phase named `residual`, with the phases it stands for (`covers`) and why. It is
  never spread over the phases beside it.
- Boundaries outside the hole are clipped to it: a phase that lies before hole[0] or
  after hole[1] keeps 0 µs, and a phase cut by an edge says `clipped`. A flow's hole
  that starts long before STOP simply has a longer pre_stop.
Debian's 7.2 has no vmstate_downtime events: its savevm_section_* and
migration_completion_vm_stop give the source's boundaries (src_stop then starts at STOP,
which QEMU sends once the vCPUs are paused: the first part of the stop is in pre_stop),
process_incoming_migration_co_end the end of the load, and `missing` says what that
costs. Without any trace the marks still give pre_stop, the harness's phases and those
after `cont`; QEMU's part is one residual, and `available` is False.

Breakdown.to_json() is the record's `downtime_breakdown`: {available, missing, events,
problems: [str], hole: [s, s], blackout_ms, residual_ms, qemu_downtime_ms, virtio_net:
{save_ms, load_ms}, phases: [{name, start, end, ms, start_by, end_by, clipped,
devices?: [{idstr, instance_id, type, ms}], covers?, why?}]}; times are wall-clock
seconds, every ms is rounded to 0.001 (exact: the phases are integer µs).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

# The trace, read: re-exported, so that a caller needs this module alone.
from harness.qemu.trace import (
    Device,
    Side,
    TraceLog,
    TraceProblem,
    load_trace,
    parse_trace,
    source_side,
    target_side,
)

__all__ = ["Breakdown", "Device", "HopMarks", "Phase", "PhaseMedian", "Side", "TraceLog",
           "TraceProblem", "breakdown", "compare_phases", "load_trace", "parse_trace",
           "source_side", "target_side"]

PHASES = ("pre_stop", "src_stop", "ram", "devices_saved", "transfer_and_load",
          "dst_complete", "src_complete", "harness_qmp", "host_switch", "harness_cont",
          "cont_to_resume", "guest_warmup")
RESIDUAL = "residual"
TOP_DEVICES = 5  # the largest devices a phase names, besides virtio-net


@dataclass(frozen=True)
class HopMarks:
    """Wall-clock seconds (time.time(), the clock of QMP event timestamps, the probes'
    kernel timestamps and the trace) the harness observes in one hop."""

    stop: float  # the source's STOP event
    cont_sent: float  # just before `cont` goes to the target
    resume: float  # the target's RESUME event
    src_completed: float | None = None  # MIGRATION completed on the source
    dst_completed: float | None = None  # MIGRATION completed on the target
    switch_start: float | None = None  # the new-TAP host switch; None when nothing moves
    switch_end: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HopMarks:
        def opt(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        return cls(float(data["stop"]), float(data["cont_sent"]), float(data["resume"]),
                   opt("src_completed"), opt("dst_completed"), opt("switch_start"),
                   opt("switch_end"))


@dataclass(frozen=True)
class Phase:
    """[start_us, end_us) of one phase, µs since the epoch; what marks either end."""

    name: str
    start_us: int
    end_us: int
    start_by: str
    end_by: str
    clipped: bool = False  # an edge of the hole cut it
    devices: tuple[Device, ...] = ()  # the largest, and virtio-net, saved or loaded in it
    covers: tuple[str, ...] = ()  # residual: the phases no checkpoint could split
    why: str = ""  # residual: what was missing or out of order

    @property
    def us(self) -> int:
        return self.end_us - self.start_us

    @property
    def ms(self) -> float:
        return self.us / 1000

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "start": self.start_us / 1e6,
                               "end": self.end_us / 1e6, "ms": round(self.ms, 3),
                               "start_by": self.start_by, "end_by": self.end_by,
                               "clipped": self.clipped}
        if self.devices:
            out["devices"] = [d.to_json() for d in self.devices]
        if self.covers:
            out.update(covers=list(self.covers), why=self.why)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Phase:
        # A record keeps no device's end time: it comes back as 0.
        devices = tuple(Device(x["idstr"], x["instance_id"], x["type"], round(x["ms"] * 1000),
                               0) for x in d.get("devices", ()))
        return cls(d["name"], round(d["start"] * 1e6), round(d["end"] * 1e6), d["start_by"],
                   d["end_by"], d.get("clipped", False), devices, tuple(d.get("covers", ())),
                   d.get("why", ""))


@dataclass(frozen=True)
class Breakdown:
    """One hole, split: `phases` run consecutively from hole[0] to hole[1]."""

    hole: tuple[float, float]
    phases: tuple[Phase, ...]
    available: bool  # QEMU's own checkpoints split the hole, all or part of it
    missing: str | None  # what cannot be split, in one line; None when nothing
    events: str  # the trace events it rests on: vmstate_downtime, savevm_state or none
    problems: tuple[str, ...] = ()  # the trace files' problems (missing, cut short ...)
    qemu_downtime_ms: float | None = None  # src-downtime-start to -end, by the trace
    virtio_net_save_ms: float | None = None
    virtio_net_load_ms: float | None = None  # v12's fd handover happens in this load

    @property
    def blackout_ms(self) -> float:
        return (round(self.hole[1] * 1e6) - round(self.hole[0] * 1e6)) / 1000

    @property
    def residual_ms(self) -> float:
        return sum(p.us for p in self.phases if p.name == RESIDUAL) / 1000

    def phase_ms(self) -> dict[str, float]:
        """ms per phase name, the residual's segments summed (0.0 when there are none)."""
        us = {RESIDUAL: 0}
        for p in self.phases:
            us[p.name] = us.get(p.name, 0) + p.us
        return {name: v / 1000 for name, v in us.items()}

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "missing": self.missing, "events": self.events,
                "problems": list(self.problems), "hole": list(self.hole),
                "blackout_ms": round(self.blackout_ms, 3),
                "residual_ms": round(self.residual_ms, 3),
                "qemu_downtime_ms": self.qemu_downtime_ms,
                "virtio_net": {"save_ms": self.virtio_net_save_ms,
                               "load_ms": self.virtio_net_load_ms},
                "phases": [p.to_json() for p in self.phases]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Breakdown | None:
        """The record's `downtime_breakdown`; None for a record written before it."""
        if data is None:
            return None
        vnet = data.get("virtio_net") or {}
        return cls((data["hole"][0], data["hole"][1]),
                   tuple(Phase.from_json(p) for p in data.get("phases", ())),
                   data["available"], data.get("missing"), data.get("events", "none"),
                   tuple(data.get("problems", ())), data.get("qemu_downtime_ms"),
                   vnet.get("save_ms"), vnet.get("load_ms"))


@dataclass(frozen=True)
class _Bound:
    phase: str  # the phase that ends here
    at: int | None  # µs since the epoch; None: missing
    by: str  # the checkpoint, event or harness step that marks it


def _us(t: float) -> int:
    return round(t * 1e6)


def _opt(t: float | None) -> int | None:
    return None if t is None else _us(t)


def _cp(side: Side, phase: str, checkpoint: str) -> _Bound:
    return _Bound(phase, side.checkpoints.get(checkpoint), side.by.get(checkpoint, checkpoint))


def _bounds(m: HopMarks, src: Side, dst: Side) -> list[_Bound]:
    """Each phase's end, in order; the last one's (the hole's end) is _chain's to fill."""
    start = src.checkpoints.get("src-downtime-start")
    out = [_Bound("pre_stop", start, "src-downtime-start") if start is not None
           else _Bound("pre_stop", _us(m.stop), "STOP"),
           _cp(src, "src_stop", "src-vm-stopped"), _cp(src, "ram", "src-iterable-saved"),
           _cp(src, "devices_saved", "src-non-iterable-saved"),
           _cp(dst, "transfer_and_load", "dst-precopy-loadvm-completed"),
           _Bound("dst_complete", _us(m.dst_completed), "MIGRATION completed (target)")
           if m.dst_completed is not None else
           _cp(dst, "dst_complete", "dst-precopy-bh-vm-started")]
    if m.src_completed is not None:
        done = [t for t in (_us(m.src_completed), out[-1].at) if t is not None]
        out.append(_Bound("src_complete", max(done), "MIGRATION completed (both)"))
    if m.switch_start is None and m.switch_end is None:
        out.append(_Bound("harness_qmp", _us(m.cont_sent), "cont sent"))
    else:
        out += [_Bound("harness_qmp", _opt(m.switch_start), "host switch start"),
                _Bound("host_switch", _opt(m.switch_end), "host switch end"),
                _Bound("harness_cont", _us(m.cont_sent), "cont sent")]
    return [*out, _Bound("cont_to_resume", _us(m.resume), "RESUME"),
            _Bound("guest_warmup", None, "first reply")]


def _chain(h0: int, h1: int, bounds: Sequence[_Bound]) -> list[Phase]:
    """Consecutive phases from h0 to h1 by the module's rules: a missing or out-of-order
    boundary is dropped into a residual, the rest are clipped to the hole."""
    phases: list[Phase] = []
    cur, raw, cur_by = h0, None, "last reply"
    skipped: list[str] = []
    why: list[str] = []
    for i, b in enumerate(bounds):
        last = i == len(bounds) - 1
        at = h1 if last else b.at
        if at is None:
            skipped.append(b.phase)
            why.append(f"no {b.by}")
            continue
        if not last and raw is not None and at < raw:
            skipped.append(b.phase)
            why.append(f"{b.by} is {(raw - at) / 1000:.3f} ms before {cur_by}")
            continue
        end = min(max(at, h0), h1)
        if skipped:
            phases.append(Phase(RESIDUAL, cur, end, cur_by, b.by,
                                covers=(*skipped, b.phase), why="; ".join(why)))
        else:
            clipped = at != end or (raw if raw is not None else h0) != cur
            phases.append(Phase(b.phase, cur, end, cur_by, b.by, clipped))
        cur, raw, cur_by, skipped, why = end, at, b.by, [], []
    return phases


def _top(devices: Sequence[Device]) -> tuple[Device, ...]:
    top = sorted(devices, key=lambda d: -d.us)[:TOP_DEVICES]
    return (*top, *(d for d in devices if d.virtio_net and d not in top))


def _with_devices(phases: Sequence[Phase], src: Side, dst: Side) -> tuple[Phase, ...]:
    """The devices behind ram, devices_saved and transfer_and_load. The target loads
    while the source still saves: the load phase is only the part after the source is
    done, and its devices are all the target loaded."""
    picks = {"ram": [d for d in src.devices if d.type == "iterable"],
             "devices_saved": [d for d in src.devices if d.type == "non-iterable"],
             "transfer_and_load": list(dst.devices)}
    return tuple(replace(p, devices=_top(picks[p.name])) if p.name in picks else p
                 for p in phases)


def _virtio_ms(side: Side) -> float | None:
    us = [d.us for d in side.devices if d.virtio_net]
    return sum(us) / 1000 if us else None


def _missing(qemu: str, logs: tuple[TraceLog | None, TraceLog | None],
             sides: tuple[Side, Side], untraced: str | None) -> str | None:
    if logs == (None, None):
        return untraced or f"{qemu} has no vmstate_downtime trace events"
    parts = []
    if "savevm_state" in (sides[0].kind, sides[1].kind):
        parts.append(f"{qemu} has no vmstate_downtime trace events: its savevm_section_* and "
                     "migration_completion_vm_stop split the source (src_stop starts at "
                     "STOP), its loads run section to section, the target's bottom half "
                     "is not split")
    for name, log, side in zip(("source", "target"), logs, sides, strict=True):
        if log is None:
            parts.append(f"the {name} was not traced")
        elif side.kind == "none":
            said = f": {side.problems[0]}" if side.problems else ""
            parts.append(f"the {name}'s trace holds no migration{said}")
    return "; ".join(parts) or None


def breakdown(hole: tuple[float, float], marks: HopMarks, source: TraceLog | None,
              target: TraceLog | None, qemu: str, *,
              untraced: str | None = None) -> Breakdown:
    """Where the hole (last reply before, first reply after) goes. source/target None:
    that QEMU was not traced, by default because it has no such events (`untraced`
    words it otherwise). Never raises on what the traces lack: see missing/problems."""
    src = source_side(source) if source is not None else Side("none")
    dst = target_side(target) if target is not None else Side("none")
    kinds = {src.kind, dst.kind} - {"none"}
    events = "savevm_state" if "savevm_state" in kinds else kinds.pop() if kinds else "none"
    problems = tuple(str(p) for p in (*src.problems, *dst.problems))
    missing = _missing(qemu, (source, target), (src, dst), untraced)
    h0, h1 = _us(hole[0]), _us(hole[1])
    if h1 < h0:
        return Breakdown(hole, (), False, f"the hole ends before it starts: {hole}", events,
                         problems)
    phases = _with_devices(_chain(h0, h1, _bounds(marks, src, dst)), src, dst)
    start, end = (src.checkpoints.get(f"src-downtime-{k}") for k in ("start", "end"))
    qemu_ms = (end - start) / 1000 if start is not None and end is not None else None
    return Breakdown(hole, phases, bool(src.checkpoints or dst.checkpoints), missing, events,
                     problems, qemu_ms, _virtio_ms(src), _virtio_ms(dst))


@dataclass(frozen=True)
class PhaseMedian:
    """One phase over two sets of breakdowns (e.g. new-TAP and local, or two builds)."""

    name: str
    baseline_ms: float | None  # the median over the breakdowns that have the phase
    current_ms: float | None
    delta_ms: float | None  # current - baseline
    n_baseline: int
    n_current: int


def compare_phases(baseline: Sequence[Breakdown],
                   current: Sequence[Breakdown]) -> tuple[PhaseMedian, ...]:
    """The median of each phase on either side, and their difference; a phase a
    breakdown lacks (local has no host_switch) is left out of that breakdown's side,
    never counted as 0. The residual counts as 0 where there is none: that is true."""
    def median(bs: Sequence[Breakdown], name: str) -> tuple[float | None, int]:
        vals = [ms[name] for b in bs if name in (ms := b.phase_ms())]
        return (round(statistics.median(vals), 3) if vals else None), len(vals)

    out = []
    for name in (*PHASES, RESIDUAL):
        (a, na), (b, nb) = median(baseline, name), median(current, name)
        if na or nb:
            delta = round(b - a, 3) if a is not None and b is not None else None
            out.append(PhaseMedian(name, a, b, delta, na, nb))
    return tuple(out)
