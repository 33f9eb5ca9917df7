"""One boot, many migrations: the same guest hopping between fresh QEMUs, N times.

A sample of a single run costs a guest boot; a chain boots once and then migrates
back and forth, each hop to a new incoming QEMU on the same shared RAM file, so a
campaign gets 100 samples in the time of 20 boots. Local mode keeps tap0 all the way;
new-TAP alternates tap0 and tap1, moving the host's IP and MAC every hop (the phases
of harness.run.phases do both). Repetition is also where fd passing goes wrong, so after
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
from types import TracebackType
from typing import Any

from harness.errors import Inconclusive, InternalError, TapmigError
from harness.record import RunRecord
from harness.report.summary import cpu_model
from harness.run import footprint, phases, scenario
from harness.run.assemble import Context, assemble, with_artifacts
from harness.run.config import Config
from harness.run.lab import Lab
from harness.run.observer import Observer, PhaseClock
from harness.run.results import Hop
from harness.run.scenario import now
from harness.run.setup import Setup, settle
from harness.run.timings import hop_timings
from harness.vocabulary import Log

Emit = Callable[[RunRecord], None]
# Shorter probing before and after the migration than a single run's 0.5 s, so that a
# hop of a 1000-hop soak does not spend most of its time waiting. The tail starts once
# ICMP (and every flow) answered again after RESUME (phases.measured_hop waits for
# it), so it only has to show that traffic stays healthy; a quarter second before the
# migration gives ~270 samples to see the outage begin.
SETTLE_S = 0.25
TAIL_S = 0.3


@dataclass(frozen=True)
class Chain:
    """What one chain is asked to do; cfg is every hop's."""

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


def _shut_last_good(lab: Lab) -> dict[str, Any]:
    """The half-started target goes first; then the QEMU that last ran the guest quits."""
    if lab.target is not None:
        lab.target.shutdown()
    src = lab.source
    if src is None or src.proc is None:
        return {}
    src.shutdown()
    return {"qemu": src.name, "exit_status": src.proc.returncode}


def _save(lab: Lab, rec: RunRecord, hop: Hop) -> dict[str, str]:
    """Keep this hop's files (probe logs, timeline, the QEMUs' consoles and stderr) in
    the chain's out: the first hop's as an example, a failing hop's as evidence.
    The run dir holds nothing older, as _trim clears it after every hop."""
    out = lab.cfg.out
    if out is None:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    kept = {}
    for path in sorted(lab.rundir.iterdir()):
        if path.is_file() and not path.is_symlink():
            name = f"hop{rec.hop}-{path.name}"
            shutil.copyfile(path, out / name)
            kept[path.stem] = name
    if hop.logs is not None and rec.stop_ts is not None:
        name = f"hop{rec.hop}-timeline{hop.logs.suffix}.html"
        scenario.write_timeline(out / name, rec, hop.logs)
        kept[f"timeline{hop.logs.suffix}"] = name
    return kept


def _trim(lab: Lab) -> None:
    """A finished hop's files go, so the run dir stays the size of one hop: all but the
    serving QEMU's sockets, logs and trace, which the next hop's breakdown reads (a
    1000-hop soak would otherwise keep 1000 of each)."""
    vm = lab.source
    keep = set() if vm is None else {vm.qmp_path, vm.console_path, vm.console_log,
                                      vm.stderr_log, lab.trace_log(vm.name)}
    for path in lab.rundir.iterdir():
        if path not in keep and not path.is_dir():
            path.unlink(missing_ok=True)


def hop(lab: Lab, hop: Hop, tap0_index: int, clock: PhaseClock) -> Inconclusive | None:
    """One measured migration of the chain, verified, then sampled. A hop the host was
    too noisy to judge is no failure: the chain goes on, and the hop says so."""
    clock.start()
    undecided = None
    try:
        phases.measured_hop(lab, hop)
        clock.mark("analysed")
        try:
            phases.verify(lab, hop, tap0_index)
        except Inconclusive as exc:
            undecided = exc
        clock.mark("verified")
        pid = phases.serving(lab).pid
        if pid is None:
            raise InternalError("the serving QEMU has no PID after the hop")
        hop.footprint = footprint.sample(pid, lab.ns)
        clock.mark("sampled")
    finally:
        hop.timings = hop_timings(clock)
    return undecided


class ChainRun:
    """Runs one Chain, handing each hop's record to emit."""

    def __init__(self, chain: Chain, emit: Emit, log: Log, setup: Setup | None = None,
                 observers: Sequence[Observer[Lab]] = ()) -> None:
        self.chain, self.emit, self.log = chain, emit, log
        self.clock = PhaseClock()
        self.observers: tuple[Observer[Lab], ...] = (self.clock, *observers)
        self.setup = setup
        self.cfg = chain.cfg
        self.ctx = Context(self.cfg, None, now(), chain=chain.ident, shard=chain.shard,
                           cpu_model=cpu_model())
        self.done = 0  # the last hop handed to emit

    def run(self) -> None:
        first = Hop(1, now())
        try:
            setup = settle(self.cfg, self.log, self.setup)
        except TapmigError as exc:
            self.emit(assemble(self.ctx, first, exc, None))
            return
        self.ctx = replace(self.ctx, setup=setup)
        with ExitStack() as stack:
            lab = Lab(self.cfg, setup, stack, self.log, self.observers)
            rotation = stack.enter_context(Rotation(lab))
            self._hops(lab, rotation, first)

    def _hops(self, lab: Lab, rotation: Rotation, current: Hop) -> None:
        t0 = time.monotonic()
        try:
            tap0_index = lab.add_taps()
            self.ctx = replace(self.ctx, boot_s=phases.boot_source(lab))
            for n in range(1, self.chain.hops + 1):
                # Hop 1 starts after the boot too: boot_s is reported on its own.
                current = current if n == 1 else Hop(n, now())
                t0 = time.monotonic()
                rotation.next()
                undecided = hop(lab, current, tap0_index, self.clock)
                self._finish(current, t0, lab, rotation, undecided)
                if self.chain.deadline is not None and time.monotonic() >= self.chain.deadline:
                    break
            phases.serving(lab).shutdown()
        except (TapmigError, KeyboardInterrupt) as exc:
            self._fail(lab, current, t0, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise

    def _finish(self, current: Hop, t0: float, lab: Lab, rotation: Rotation,
                undecided: Inconclusive | None) -> None:
        rec = assemble(self.ctx, current, undecided, round(time.monotonic() - t0, 3))
        if current.number == 1:
            rec = with_artifacts(rec, _save(lab, rec, current))
        rotation.retire()
        _trim(lab)
        self.emit(rec)
        self.done = current.number

    def _fail(self, lab: Lab, current: Hop, t0: float, exc: BaseException) -> None:
        """Name what ended the chain, keep its evidence, and quit the last good QEMU.
        A Ctrl-C after the last hop was recorded (in the final shutdown) adds no record."""
        if current.number <= self.done:
            _shut_last_good(lab)
            return
        current.last_good_qemu = _shut_last_good(lab)
        rec = assemble(self.ctx, current, exc, round(time.monotonic() - t0, 3))
        self.emit(with_artifacts(rec, _save(lab, rec, current)))
