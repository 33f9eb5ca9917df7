"""One boot, many migrations: the same guest hopping between fresh QEMUs, N times.

A sample of a single run costs a guest boot; a chain boots once and then migrates
back and forth, each hop to a new incoming QEMU on the same shared RAM file, so a
campaign gets 100 samples in the time of 20 boots. Local mode keeps tap0 all the way;
new-TAP alternates tap0 and tap1, moving the host's IP and MAC every hop (the phases
of harness.run.scenario do both). Repetition is also where fd passing goes wrong, so after
every hop the serving QEMU's fds, the TAP's queues, memory and the namespace's
interfaces are sampled (harness.run.footprint) for harness.analysis.trend to judge.

Every hop is a full RunRecord, handed to `emit` as soon as it ends. A hop that fails,
or a Ctrl-C, ends the chain: the failing hop is recorded with its reason, the last
QEMU that ran the guest is shut down (its exit status kept), and the ExitStack takes
the rest; every finished hop stays recorded.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from harness.errors import TapmigError
from harness.qemu.vm import VM
from harness.record import RunRecord
from harness.report.summary import cpu_model
from harness.run import footprint, scenario
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer, PhaseClock
from harness.run.setup import Setup, settle

Log = Callable[[str], None]
Emit = Callable[[RunRecord], None]
# Shorter probing before and after the migration than a single run's 0.5 s, so that a
# hop of a 1000-hop soak does not spend most of its time waiting. The tail starts once
# ICMP (and every flow) answered again after RESUME (scenario.measured_hop waits for
# it), so it only has to show that traffic stays healthy; a quarter second before the
# migration gives ~270 samples to see the outage begin.
SETTLE_S = 0.25
TAIL_S = 0.3


@dataclass(frozen=True)
class Chain:
    """What one chain is asked to do. cfg is a template: its fault hook still runs."""

    cfg: Config
    hops: int
    ident: str
    deadline: float | None = None  # time.monotonic() after which no hop starts
    shard: str | None = None

    @classmethod
    def new(cls, cfg: Config, hops: int, name: str, deadline: float | None = None,
            shard: str | None = None) -> Chain:
        return cls(replace(cfg, settle_s=SETTLE_S, tail_s=TAIL_S), hops,
                   f"{name}-{secrets.token_hex(3)}", deadline, shard)


class Rotation:
    """Each QEMU in an ExitStack of its own, so a chain lets go of the ones it retired.

    The Lab enters every VM it starts into lab.stack; over 1000 hops one stack would
    hold 1000 dead VMs and their buffers. The Lab is given a fresh stack per hop, and
    after the hop every older one (holding only the QEMU that quit) is closed.
    """

    def __init__(self, lab: Lab) -> None:
        self.lab, self.main = lab, lab.stack
        self.stacks: list[ExitStack] = []

    def __enter__(self) -> Rotation:
        self.next()
        return self

    def next(self) -> None:
        self.stacks.append(ExitStack())
        self.lab.stack = self.stacks[-1]

    def retire(self) -> None:
        while len(self.stacks) > 1:
            self.stacks.pop(0).close()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.lab.stack = self.main
        while self.stacks:
            self.stacks.pop().close()  # the newest (a half-started target) first


def _event_ts(vm: VM, status: str) -> float | None:
    """The latest: a source that was the previous hop's target saw incoming ones first."""
    for ev in reversed(vm.events):
        if ev.get("event") == "MIGRATION" and ev.get("data", {}).get("status") == status:
            return scenario.event_time(ev)
    return None


def phases(t0: float, probing: float, src: VM, rec: RunRecord,
           ends: tuple[float, float, float]) -> dict[str, float]:
    """Seconds per phase of one hop, from wall-clock marks and QEMU's event timestamps:
    settle, starting the target (up to the source's MIGRATION setup), the migration,
    switchover to RESUME, the tail (source quits, probe drains, analysis), verify, sample."""
    hop_end, verified, sampled = ends
    marks = [("settle", probing), ("start_target", _event_ts(src, "setup")),
             ("migrate", _event_ts(src, "completed")), ("switchover", rec.resume_ts),
             ("tail", hop_end), ("verify", verified), ("sample", sampled)]
    out, last = {}, t0
    for name, at in marks:
        if at is not None and at >= last:
            out[name], last = round(at - last, 4), at
    return out


def _shut_last_good(lab: Lab) -> dict[str, Any]:
    """The half-started target goes first; then the QEMU that last ran the guest quits."""
    if lab.target is not None:
        lab.target.shutdown()
    src = lab.source
    if src is None or src.proc is None:
        return {}
    src.shutdown()
    return {"qemu": src.name, "exit_status": src.proc.returncode}


def _save(lab: Lab, rec: RunRecord) -> None:
    """Keep this hop's files (probe logs, timeline, the QEMUs' consoles and stderr) in
    the chain's out: the first hop's as an example, a failing hop's as evidence.
    The run dir holds nothing older, as _trim clears it after every hop."""
    out = lab.cfg.out
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(lab.rundir.iterdir()):
        if path.is_file() and not path.is_symlink():
            name = f"hop{rec.hop}-{path.name}"
            shutil.copyfile(path, out / name)
            rec.artifacts[path.stem] = name


def _trim(lab: Lab) -> None:
    """A finished hop's files go, so the run dir stays the size of one hop: all but the
    serving QEMU's sockets and logs (a 1000-hop soak would otherwise keep 1000 of each)."""
    vm = lab.source
    keep = set() if vm is None else {vm.qmp_path, vm.console_path, vm.console_log,
                                      vm.stderr_log}
    for path in lab.rundir.iterdir():
        if path not in keep and not path.is_dir():
            path.unlink(missing_ok=True)


def hop(lab: Lab, rec: RunRecord, tap0_index: int, clock: PhaseClock) -> None:
    """One measured migration of the chain, verified, then sampled."""
    src = lab.source
    assert src is not None
    t0 = time.time()
    scenario.measured_hop(lab, rec)
    hop_end = time.time()
    scenario.verify(lab, rec, tap0_index)
    verified = time.time()
    assert lab.source is not None and lab.source.pid is not None
    rec.footprint = footprint.sample(lab.source.pid, lab.ns).to_json()
    rec.phases = phases(t0, clock.marks.get("probing", t0), src, rec,
                        (hop_end, verified, time.time()))


class ChainRun:
    """Runs one Chain, handing each hop's record to emit."""

    def __init__(self, chain: Chain, emit: Emit, log: Log, setup: Setup | None = None,
                 observers: Sequence[Observer[Lab]] = ()) -> None:
        self.chain, self.emit, self.log = chain, emit, log
        self.clock = PhaseClock()
        self.observers: tuple[Observer[Lab], ...] = (self.clock, *observers)
        self.setup = setup
        self.cfg = chain.cfg
        self.base = scenario.new_record(self.cfg)
        self.base.chain, self.base.shard, self.base.cpu_model = (chain.ident, chain.shard,
                                                                 cpu_model())
        self.done = 0  # the last hop handed to emit

    def record(self, n: int) -> RunRecord:
        rec = replace(self.base, checks={}, artifacts={}, phases={})
        rec.hop = n
        return rec

    def run(self) -> None:
        first = self.record(1)
        try:
            setup = self._setup(first)
        except TapmigError as exc:
            first.fail(exc)
            self.emit(first)
            return
        with ExitStack() as stack:
            lab = Lab(self.cfg, setup, stack, self.log, self.observers)
            rotation = stack.enter_context(Rotation(lab))
            self._hops(lab, rotation, first)

    def _setup(self, rec: RunRecord) -> Setup:
        """The campaign's Setup, or one settled here, stamped on every hop's record."""
        setup = settle(self.cfg, self.log, self.setup)
        b, caps = self.base, setup.caps
        b.qemu, b.qemu_version, b.interface = caps.qemu, caps.version, caps.interface
        b.guest, b.accel, b.accel_reason = setup.guest.name, setup.accel, setup.accel_reason
        for key in ("qemu", "qemu_version", "interface", "guest", "accel", "accel_reason"):
            setattr(rec, key, getattr(b, key))
        return setup

    def _hops(self, lab: Lab, rotation: Rotation, rec: RunRecord) -> None:
        t0 = time.monotonic()
        try:
            tap0_index = lab.add_taps()
            rec.boot_s = scenario.boot_source(lab)
            for n in range(1, self.chain.hops + 1):
                # Hop 1 starts after the boot too: boot_s is reported on its own.
                rec = rec if n == 1 else self.record(n)
                rec.started, t0 = datetime.now(UTC).isoformat(), time.monotonic()
                rotation.next()
                hop(lab, rec, tap0_index, self.clock)
                self._finish(rec, t0, lab, rotation)
                if self.chain.deadline is not None and time.monotonic() >= self.chain.deadline:
                    break
            assert lab.source is not None
            lab.source.shutdown()
        except (TapmigError, KeyboardInterrupt) as exc:
            self._fail(lab, rec, t0, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise

    def _finish(self, rec: RunRecord, t0: float, lab: Lab, rotation: Rotation) -> None:
        if rec.hop == 1:
            _save(lab, rec)
        rotation.retire()
        _trim(lab)
        rec.duration_s = round(time.monotonic() - t0, 3)
        self.emit(rec)
        self.done = rec.hop or 0

    def _fail(self, lab: Lab, rec: RunRecord, t0: float, exc: BaseException) -> None:
        """Name what ended the chain, keep its evidence, and quit the last good QEMU.
        A Ctrl-C after the last hop was recorded (in the final shutdown) adds no record."""
        if (rec.hop or 0) <= self.done:
            _shut_last_good(lab)
            return
        if isinstance(exc, TapmigError):
            rec.fail(exc)
        else:
            rec.status, rec.failure = "failed", {"kind": "Interrupted"}
            rec.error = f"interrupted (SIGINT or SIGTERM) during hop {rec.hop}"
        _save(lab, rec)
        rec.checks["last_good_qemu"] = _shut_last_good(lab)
        rec.duration_s = round(time.monotonic() - t0, 3)
        self.emit(rec)
